"""The import contract: the layers of the flow, checked in CI (the module docstrings say why).

    cli, tui, demo, sandbox          (what people run)
      -> services                    (milter, senders, quarantine, dnsdoctor, ...)
        -> policy, store, signing    (the pure engine; the only SQL; DKIM)
          -> config                  (typed models and the loader)

A module imports only from its own layer or the layers below. Inside the middle layer, the
engine (policy) imports neither store nor signing: it stays pure; store may use the engine's
plain value types (policy.model) and nothing else of it. A new module must be given a layer
here.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "postwarden"

LAYERS: dict[str, int] = {
    "__init__": 0,
    "__main__": 3,
    "config": 0,
    "textsafe": 0,
    "suffixes": 0,
    "owner": 0,
    "policy": 1,
    "store": 1,
    "signing": 1,
    "milter": 2,
    "senders": 2,
    "quarantine": 2,
    "dnsdoctor": 2,
    "reports": 2,
    "feedback": 2,
    "setup_postfix": 2,
    "audit": 2,
    "control": 2,
    "keytools": 2,
    "policyedit": 2,
    "metrics": 2,
    "schedule": 2,
    "cli": 3,
    "tui": 3,
    "demo": 3,
    "sandbox": 3,
}


def _unit(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py")


def _imports(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return [n for n in names if n.split(".")[0] == "postwarden"]


def test_every_module_has_a_layer() -> None:
    units = {_unit(p) for p in SRC.rglob("*.py")}
    assert sorted(units - set(LAYERS)) == []


def test_no_module_imports_from_a_layer_above_its_own() -> None:
    offenders = []
    for path in SRC.rglob("*.py"):
        unit = _unit(path)
        for name in _imports(path):
            parts = name.split(".")
            target = parts[1] if len(parts) > 1 else "__init__"
            if LAYERS.get(target, 99) > LAYERS[unit]:
                offenders.append(f"{path.relative_to(SRC)} imports {name}")
            if unit == "policy" and target in ("store", "signing"):
                offenders.append(f"{path.relative_to(SRC)} (the pure engine) imports {name}")
            if unit == "store" and target == "policy" and name != "postwarden.policy.model":
                offenders.append(f"{path.relative_to(SRC)} imports {name}: only policy.model")
    assert offenders == []


def test_sql_lives_in_store_only() -> None:
    """No SQL outside store/: no module but store's imports sqlite3 or runs execute()."""
    offenders = []
    for path in SRC.rglob("*.py"):
        if _unit(path) == "store":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("execute", "executemany", "executescript")
            ):
                offenders.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert offenders == []
