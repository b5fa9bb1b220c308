"""What the decision's speed depends on (issue 21), counted, not timed: through the milter's
callbacks with a real SQLite rate store and real signing, each check that does not read the
sender's rate state runs once per message, and those that do (rate, warmup) once more inside
the rate transaction; a message refused before the rate check runs every check once."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path

import Milter
import pytest

from postwarden.policy import registry
from postwarden.policy.engine import Context
from postwarden.policy.model import Reason
from tests.helpers import message
from tests.protocol.test_adapter import Ctx
from tests.protocol.test_plan import _runtime, rows, send


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Each check's calls, by name: the registry's checks wrapped in a counter."""
    counted: Counter[str] = Counter()

    def counting(name: str, fn: Callable[[Context], Iterable[Reason]]) -> Callable[..., object]:
        def run(ctx: Context) -> Iterable[Reason]:
            counted[name] += 1
            return fn(ctx)

        return run

    wrapped = tuple(replace(c, fn=counting(c.name, c.fn)) for c in registry.ordered())
    monkeypatch.setattr(registry, "_ORDERED", wrapped)
    return counted


RATE_READERS = {"rate", "warmup"}


def test_each_check_runs_once_and_the_rate_readers_once_more_in_the_transaction(
    tmp_path: Path, calls: Counter[str]
) -> None:
    rt = _runtime(tmp_path)  # [rate] messages = ["1/minute"], lock = true
    names = [c.name for c in registry.ordered()]
    assert {c.name for c in registry.ordered() if "rate" in c.reads} == RATE_READERS
    ctx = Ctx()
    ctx.connect()
    # accepted (under the cap), held (breaks it: exceeded and locked_now), held (locked)
    for i, expected in enumerate([Milter.ACCEPT, Milter.ACCEPT, Milter.ACCEPT]):
        calls.clear()
        assert send(ctx, f"m{i}", f"Q{i}") == expected
        assert calls == {n: 2 if n in RATE_READERS else 1 for n in names}, i
    # refused before the rate check: decided by the first evaluation alone
    calls.clear()
    rc = ctx.send(
        message(from_="x@elsewhere.test"),
        "alice@example.com",
        "b@r.test",
        login="alice@example.com",
    )
    assert rc == Milter.REJECT
    assert calls == dict.fromkeys(names, 1)
    decided = rows(rt)
    assert [r["action"] for r in decided] == ["accept", "quarantine", "quarantine", "reject"]
    assert [[x["code"] for x in r["reasons"]] for r in decided] == [  # type: ignore[union-attr]
        [],
        ["exceeded", "locked_now"],
        ["locked"],
        ["not_hosted"],
    ]
    assert [len(r["signatures"]) for r in decided] == [1, 1, 1, 0]  # type: ignore[arg-type]


def test_inbound_mail_runs_the_outbound_check_alone_once(
    tmp_path: Path, calls: Counter[str]
) -> None:
    rt = _runtime(tmp_path)
    ctx = Ctx()
    ctx.connect()
    assert ctx.send(message(), "someone@remote.test", "alice@example.com") == Milter.ACCEPT
    assert calls == {"outbound": 1}
    [r] = rows(rt)
    assert r["outbound"] == 0
