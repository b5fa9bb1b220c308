"""docs/benchmarks.md is written by more than one benchmark: each owns a section between
`<!-- section: NAME -->` and `<!-- /section: NAME -->`, which the others keep as it is."""

from __future__ import annotations

import re
from pathlib import Path

_SECTION = re.compile(r"<!-- section: (\S+) -->\n.*?<!-- /section: \1 -->\n", re.S)


def wrap(name: str, text: str) -> str:
    return f"<!-- section: {name} -->\n{text.rstrip()}\n<!-- /section: {name} -->\n"


def keep_sections(old: str, new: str) -> str:
    """`new` with every section of `old` that `new` does not have appended."""
    have = {m.group(1) for m in _SECTION.finditer(new)}
    kept = [m.group(0) for m in _SECTION.finditer(old) if m.group(1) not in have]
    return new.rstrip() + "\n" + ("\n" + "\n".join(kept) if kept else "")


def write_section(path: Path, name: str, text: str) -> None:
    """Put `text` in section `name` of `path`, replacing the old one, keeping the rest."""
    old = path.read_text() if path.exists() else ""
    block = wrap(name, text)
    pattern = re.compile(
        rf"<!-- section: {re.escape(name)} -->\n.*?<!-- /section: {re.escape(name)} -->\n", re.S
    )
    if pattern.search(old):
        new = pattern.sub(lambda _: block, old)
    else:
        new = old.rstrip() + "\n\n" + block
    path.write_text(new)
