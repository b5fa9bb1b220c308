"""Sections of docs/benchmarks.md that a bench of its own writes (between markers), so that
`make bench` rewriting the file keeps them and each bench replaces only its own."""

from __future__ import annotations

import re
from pathlib import Path

_SECTION = re.compile(r"<!-- section:([a-z0-9-]+) -->\n.*?<!-- /section:\1 -->\n", re.S)


def sections(text: str) -> dict[str, str]:
    return {m.group(1): m.group(0) for m in _SECTION.finditer(text)}


def keep_sections(old: str, new: str) -> str:
    """`new` with every marked section of `old` that `new` lacks appended."""
    have = sections(new)
    extra = [body for name, body in sections(old).items() if name not in have]
    return new.rstrip("\n") + "\n\n" + "\n".join(extra) if extra else new


def write_section(path: Path, name: str, body: str) -> None:
    """Put `body` in `path` as section `name`: in place of the old one, else at the end."""
    block = f"<!-- section:{name} -->\n{body.rstrip()}\n<!-- /section:{name} -->\n"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if name in sections(text):
        text = text.replace(sections(text)[name], block)
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text)
