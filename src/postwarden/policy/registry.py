"""Checks registered by name, one file each, run in a fixed order.

A check's module docstring lists its reason codes under a "Reason codes:" line, one "- code: meaning"
line each; the registry reads them so that evaluate() can refuse an undeclared code and the docs
test can hold policies/README.md to the same list.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from postwarden.policy.engine import Context
    from postwarden.policy.model import Reason

CheckFn = Callable[["Context"], Iterable["Reason"]]


@dataclass(frozen=True)
class Check:
    name: str
    order: int
    fn: CheckFn
    codes: dict[str, str]
    doc: str


_REGISTRY: dict[str, Check] = {}
_CODE_RE = re.compile(r"^\s*-\s*([a-z0-9_]+):\s*(.+)$")


def parse_codes(doc: str) -> dict[str, str]:
    codes: dict[str, str] = {}
    in_codes = False
    for line in doc.splitlines():
        if line.strip().lower().startswith("reason codes"):
            in_codes = True
            continue
        if in_codes:
            m = _CODE_RE.match(line)
            if m:
                codes[m.group(1)] = m.group(2).strip()
            elif line.strip():
                in_codes = False
    return codes


def register(name: str, order: int) -> Callable[[CheckFn], CheckFn]:
    def decorate(fn: CheckFn) -> CheckFn:
        if name in _REGISTRY:
            raise ValueError(
                f"check {name!r} is registered twice ({_REGISTRY[name].fn.__module__})"
            )
        doc = sys.modules[fn.__module__].__doc__ or ""
        _REGISTRY[name] = Check(name, order, fn, parse_codes(doc), doc)
        return fn

    return decorate


def checks() -> list[Check]:
    return sorted(_REGISTRY.values(), key=lambda c: c.order)
