"""Checks registered by name, one file each, run in a fixed order.

Each check module opens with its data: `NAME`, `DEFAULTS` (the config keys it reads, with their
secure defaults, for the docs), `CODES` (reason code -> meaning) and `READS` (what of the
context it reads beyond the message: "rate", the sender's counts and lock; "prior", the reasons
of the checks before it). `register` takes them as they are, so evaluate() can refuse an
undeclared code, the docs test can hold policies/README.md to the same list, and a second
evaluation of a message with the sender's real counts runs again only the checks that read
them (engine.decide). A check that reads what it does not declare fails (UndeclaredRead).
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
    reads: frozenset[str] = frozenset()


KNOWN_READS = frozenset({"rate", "prior"})
_REGISTRY: dict[str, Check] = {}
_ORDERED: tuple[Check, ...] | None = None  # checks() in order, built once


def register(
    name: str,
    order: int,
    codes: Mapping[str, str],
    defaults: Mapping[str, object] | None = None,
    reads: Iterable[str] = (),
) -> Callable[[CheckFn], CheckFn]:
    if not codes:
        raise ValueError(f"check {name!r} declares no reason codes")
    declared = frozenset(reads)
    if declared - KNOWN_READS:
        raise ValueError(
            f"check {name!r} declares unknown READS {sorted(declared - KNOWN_READS)}:"
            f" known are {sorted(KNOWN_READS)}"
        )

    def decorate(fn: CheckFn) -> CheckFn:
        if name in _REGISTRY:
            raise ValueError(
                f"check {name!r} is registered twice ({_REGISTRY[name].fn.__module__})"
            )
        global _ORDERED
        _REGISTRY[name] = Check(name, order, fn, dict(codes), dict(defaults or {}), declared)
        _ORDERED = None
        return fn

    return decorate


def ordered() -> tuple[Check, ...]:
    """Every check in the order they run (sorted once, not per message)."""
    global _ORDERED
    if _ORDERED is None:
        _ORDERED = tuple(sorted(_REGISTRY.values(), key=lambda c: c.order))
    return _ORDERED


def checks() -> list[Check]:
    return list(ordered())
