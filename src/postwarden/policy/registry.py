"""Checks registered by name, one file each, run in a fixed order.

Each check module opens with its data: `NAME`, `DEFAULTS` (the config keys it reads, with their
secure defaults, for the docs) and `CODES` (reason code -> meaning). `register` takes them as
they are, so evaluate() can refuse an undeclared code and the docs test can hold
policies/README.md to the same list.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
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
    codes: Mapping[str, str]
    defaults: Mapping[str, object]


_REGISTRY: dict[str, Check] = {}


def register(
    name: str,
    order: int,
    codes: Mapping[str, str],
    defaults: Mapping[str, object] | None = None,
) -> Callable[[CheckFn], CheckFn]:
    if not codes:
        raise ValueError(f"check {name!r} declares no reason codes")

    def decorate(fn: CheckFn) -> CheckFn:
        if name in _REGISTRY:
            raise ValueError(
                f"check {name!r} is registered twice ({_REGISTRY[name].fn.__module__})"
            )
        _REGISTRY[name] = Check(name, order, fn, dict(codes), dict(defaults or {}))
        return fn

    return decorate


def checks() -> list[Check]:
    return sorted(_REGISTRY.values(), key=lambda c: c.order)
