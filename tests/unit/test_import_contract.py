"""The engine imports none of Milter, milter, dkim, dns, textual, sqlite_utils: it stays pure
(no I/O, no DNS) and testable without a mail server."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

FORBIDDEN = {"Milter", "milter", "dkim", "dns", "textual", "sqlite_utils"}
# The engine's own source also opens no sockets, processes or databases (the stdlib's email
# package imports socket itself, so this is checked in the source, not in sys.modules).
SOURCE_FORBIDDEN = FORBIDDEN | {"sqlite3", "socket", "subprocess", "os", "time"}
ENGINE = Path(__file__).resolve().parents[2] / "src" / "postwarden" / "policy"


def test_engine_source_imports_nothing_forbidden() -> None:
    offenders = []
    for path in ENGINE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in SOURCE_FORBIDDEN]
    assert offenders == []


def test_importing_the_engine_loads_nothing_forbidden() -> None:
    code = (
        "import sys, postwarden.policy, postwarden.policy.engine;"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(FORBIDDEN)!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
