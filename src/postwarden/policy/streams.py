"""Streams, pacing and warm-up (streams.md): the pure arithmetic.

Which provider group a recipient belongs to, what a message charges against each warm-up, a
warm-up's allowance on a given day, the pace's spacing, which held messages the releaser may
let go now, and when each waiting one is due. No I/O and no clock: time comes in as arguments.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from postwarden.config.models import Policy, WarmupEntry, parse_rate
from postwarden.policy.model import Charge

# Releases are spaced (W + margin) / N apart, margin = max(5% of W, 0.5 s): counted at release,
# never more than N leave in any window of W, and the few hundred milliseconds a delivery may
# take more or less than the one before cannot put N + 1 into a window at the receiver either.
MARGIN_SHARE = 0.05
MARGIN_MIN_S = 0.5


def provider_group(domain: str, groups: dict[str, list[str]]) -> str | None:
    """The [providers] group of a recipient domain: "gmail.com", or "hotmail.*" for
    hotmail.com, hotmail.co.uk, ..."""
    domain = domain.lower().rstrip(".")
    for group, patterns in groups.items():
        for pattern in patterns:
            if pattern.endswith(".*"):
                stem = pattern[:-2]
                if domain.startswith(stem + ".") and len(domain) > len(stem) + 1:
                    return group
            elif domain == pattern:
                return group
    return None


def warmup_keys(policy: Policy, from_domain: str) -> list[str]:
    """The warm-ups a message from `from_domain` counts against: its own, and "server"."""
    keys = []
    if from_domain and from_domain.lower() in policy.warmup:
        keys.append(from_domain.lower())
    if "server" in policy.warmup:
        keys.append("server")
    return keys


def warmup_charges(policy: Policy, from_domain: str, rcpts: Iterable[str]) -> tuple[Charge, ...]:
    """(key, group, recipients) for every warm-up and limited provider group the message
    reaches: one per recipient."""
    keys = warmup_keys(policy, from_domain)
    if not keys:
        return ()
    groups = policy.provider_groups()
    per_group: dict[str, int] = {}
    for rcpt in rcpts:
        group = provider_group(rcpt.rpartition("@")[2], groups)
        if group is not None:
            per_group[group] = per_group.get(group, 0) + 1
    out: list[Charge] = []
    for key in keys:
        for group in policy.warmup[key].providers:
            if per_group.get(group):
                out.append((key, group, per_group[group]))
    return tuple(out)


def warmup_day(entry: WarmupEntry, today: date) -> int:
    """Day 1 is `start`; before it, the schedule is held at day 1."""
    return max(1, (today - entry.start).days + 1)


def warmup_allowance(entry: WarmupEntry, today: date) -> int | None:
    """Recipients per provider group allowed on `today`; None once the schedule is over."""
    day = warmup_day(entry, today)
    return entry.daily[day - 1] if day <= len(entry.daily) else None


def pace_of(policy: Policy) -> tuple[int, int] | None:
    """(N, window seconds) of [streams.bulk].pace, or None without pacing."""
    text = policy.streams.bulk.pace
    return parse_rate(text) if text else None


def spacing(n: int, window: int) -> float:
    """Seconds between two paced releases."""
    return (window + max(window * MARGIN_SHARE, MARGIN_MIN_S)) / n


@dataclass(frozen=True)
class Waiting:
    """One held message on the releaser's schedule, oldest first by `seq`."""

    queue_id: str
    seq: int
    held_at: float  # epoch seconds
    identity: str
    pace: bool
    charges: tuple[Charge, ...]
    state: str = "held"  # "held" | "releasing" (claimed, being released)


@dataclass(frozen=True)
class PaceState:
    in_window: int  # releases in the last window
    last_release: float  # epoch seconds of the latest release, 0 when none


def _remaining(
    policy: Policy, sent: dict[tuple[str, str], int], today: date
) -> dict[tuple[str, str], float]:
    left: dict[tuple[str, str], float] = {}
    for key, entry in policy.warmup.items():
        allowance = warmup_allowance(entry, today)
        for group in entry.providers:
            limit = float("inf") if allowance is None else allowance
            left[(key, group)] = limit - sent.get((key, group), 0)
    return left


def choose(
    waiting: Sequence[Waiting],
    policy: Policy,
    pace: PaceState,
    sent: dict[tuple[str, str], int],
    today: date,
    now: float,
    limit: int = 100,
) -> list[Waiting]:
    """The held messages that may leave now, in order.

    Paced mail leaves one slot at a time, in order: the next slot is `spacing` after the last
    release, and never more than N in the window. Warm-up mail leaves oldest first while each
    of its groups has allowance left today; once a group's oldest waiting message does not fit,
    none behind it in that group goes ahead of it.
    """
    rate = pace_of(policy)
    slots = limit
    if rate is not None:
        n, window = rate
        gap = spacing(n, window)
        # One slot at a time, never a catch-up burst: a late round only makes the stream
        # slower, never denser than one per gap.
        due = not pace.last_release or now >= pace.last_release + gap
        slots = 1 if due else 0
        slots = max(0, min(limit, slots, n - pace.in_window))
    left = _remaining(policy, sent, today)
    blocked: set[tuple[str, str]] = set()
    pace_blocked = False
    out: list[Waiting] = []
    for w in waiting:
        if len(out) >= limit:
            break
        if w.state != "held":
            continue
        charges = [(k, g, c) for k, g, c in w.charges if (k, g) in left]
        fits = all((k, g) not in blocked and left[(k, g)] >= c for k, g, c in charges)
        if not fits:
            blocked.update((k, g) for k, g, _ in charges)
            if w.pace:
                pace_blocked = True  # paced mail keeps its order
            continue
        if w.pace and rate is not None:
            if pace_blocked or slots <= 0:
                pace_blocked = True
                continue
            slots -= 1
        for k, g, c in charges:
            left[(k, g)] -= c
        out.append(w)
    return out


def due_times(
    waiting: Sequence[Waiting],
    policy: Policy,
    pace: PaceState,
    sent: dict[tuple[str, str], int],
    today: date,
    now: float,
) -> dict[str, datetime]:
    """When each waiting message is due to leave (UTC), if nothing else arrives first: paced
    mail one slot after another, warm-up mail on the first day its groups have room."""
    rate = pace_of(policy)
    gap = spacing(*rate) if rate is not None else 0.0
    next_slot = max(now, pace.last_release + gap) if pace.last_release else now
    midnight = datetime.combine(today, datetime.min.time(), UTC)
    # Per (key, group): the schedule day a message lands on, and what that day has left.
    day_of: dict[tuple[str, str], date] = {}
    left_on: dict[tuple[str, str], float] = {}
    base = _remaining(policy, sent, today)
    out: dict[str, datetime] = {}
    for w in waiting:
        at = datetime.fromtimestamp(now, UTC)
        for k, g, c in w.charges:
            if (k, g) not in base:
                continue
            day = day_of.get((k, g), today)
            left = left_on.get((k, g), base[(k, g)])
            entry = policy.warmup[k]
            while left < c:
                day += timedelta(days=1)
                allowance = warmup_allowance(entry, day)
                left = float("inf") if allowance is None else allowance
                if allowance is not None and allowance < c and day > today + timedelta(400):
                    break  # a message bigger than any day's allowance: due when the schedule ends
            day_of[(k, g)], left_on[(k, g)] = day, left - c
            if day > today:
                at = max(at, midnight + timedelta(days=(day - today).days))
        if w.pace and rate is not None:
            slot = max(next_slot, at.timestamp())
            next_slot = slot + gap
            at = datetime.fromtimestamp(slot, UTC)
        out[w.queue_id] = at
    return out
