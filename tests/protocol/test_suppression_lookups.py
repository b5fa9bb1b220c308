"""One suppression look-up a recipient (issue 21): over SMTP each recipient is looked up at
RCPT, where a suppressed one is refused, and end-of-message takes what RCPT found instead of
asking the store again; sendmail(1) mail, never looked up at RCPT, is looked up once at
end-of-message. Through pymilter's TestCtx with the real SQLite suppression list. What the
message gets is unchanged: the refused recipient is refused, the rest pass, and an entry for
another domain is still among the message's facts (recorded nowhere, counted here)."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from email import message_from_bytes
from pathlib import Path

import Milter
import pytest

from postwarden.config import load_config
from postwarden.milter import adapter
from postwarden.milter.notify import Notifier
from postwarden.milter.runtime import Runtime
from postwarden.policy.model import Suppression
from postwarden.store import open_db
from postwarden.store.feedback import SuppressionLookup, suppress
from postwarden.store.rates import RateStore
from postwarden.store.writer import Writer
from tests.helpers import message, write_config
from tests.protocol.test_adapter import Ctx

ALICE = "alice@example.com"


class Counting(SuppressionLookup):
    """The real look-up, each call's addresses noted."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        self.asked: list[list[str]] = []

    def for_rcpts(self, addresses: list[str]) -> list[Suppression]:
        self.asked.append(list(addresses))
        return super().for_rcpts(addresses)


@pytest.fixture
def rt(tmp_path: Path) -> Iterator[tuple[Runtime, Counting]]:
    cfg = load_config(write_config(tmp_path))
    writer = Writer(cfg.daemon.store.database, 90)
    writer.start()
    db = open_db(cfg.daemon.store.database)
    suppress(db, "dave@remote.test", "example.com", "2026-11-23T10:00:00+00:00", "cli", "test")
    suppress(db, "carol@remote.test", "other.example", "2026-11-23T10:00:00+00:00", "cli", "t")
    lookup = Counting(cfg.daemon.store.database)
    runtime = Runtime(
        config=cfg,
        writer=writer,
        rates=RateStore(cfg.daemon.store.database),
        notifier=Notifier("/nonexistent", [], "test", "secret"),
        notice_secret="secret",
        suppressions=lookup,
    )
    Milter.factory = adapter.factory(runtime)
    yield runtime, lookup
    writer.flush_and_stop()


def _send(ctx: Ctx, rcpts: list[str], seen: list[tuple[Suppression, ...]]) -> tuple[list[int], int]:
    raw = message(from_=ALICE, to=", ".join(rcpts))
    ctx._setsymval("i", "Q1")
    ctx._setsymval("{auth_authen}", ALICE)
    assert ctx._envfrom(f"<{ALICE}>") == Milter.CONTINUE
    codes = [ctx._envrcpt(f"<{r}>") for r in rcpts]
    assert ctx._data() == Milter.CONTINUE
    for name, value in message_from_bytes(raw).items():
        ctx._header(name, value)
    ctx._eoh()
    ctx._feed_body(io.BytesIO(raw.replace(b"\r\n", b"\n").split(b"\n\n", 1)[1]))
    milter = ctx.getpriv()
    facts = milter._facts
    milter._facts = lambda q, final=False: _noting(facts(q, final), seen)
    return codes, ctx._eom()


def _noting(facts: adapter.Facts, seen: list[tuple[Suppression, ...]]) -> adapter.Facts:
    seen.append(facts.suppressed)
    return facts


def test_over_smtp_each_recipient_is_looked_up_once_at_rcpt_and_not_again(
    rt: tuple[Runtime, Counting],
) -> None:
    _, lookup = rt
    ctx = Ctx()
    ctx.connect()
    seen: list[tuple[Suppression, ...]] = []
    codes, rc = _send(ctx, ["bob@remote.test", "Carol@remote.test", "dave@remote.test"], seen)
    assert codes == [Milter.CONTINUE, Milter.CONTINUE, Milter.REJECT]  # dave: suppressed
    assert rc == Milter.ACCEPT
    # three look-ups at RCPT, one address each; none at end-of-message
    assert lookup.asked == [["bob@remote.test"], ["Carol@remote.test"], ["dave@remote.test"]]
    # end-of-message's facts still hold carol's entry (for another domain: no effect here)
    assert [(s.address, s.domain) for s in seen[-1]] == [("carol@remote.test", "other.example")]


def test_sendmail_mail_is_looked_up_once_at_end_of_message(
    rt: tuple[Runtime, Counting],
) -> None:
    _, lookup = rt
    ctx = Ctx()
    ctx.connect(ip="127.0.0.1", port=0, name="localhost", family=adapter.PICKUP_FAMILY)
    seen: list[tuple[Suppression, ...]] = []
    codes, rc = _send(ctx, ["bob@remote.test", "carol@remote.test", "dave@remote.test"], seen)
    assert codes == [Milter.CONTINUE] * 3  # never refused at RCPT for sendmail(1)
    assert rc == Milter.ACCEPT  # end-of-message decides for dave (his entry is in the facts)
    assert lookup.asked == [["bob@remote.test", "carol@remote.test", "dave@remote.test"]]
    assert sorted((s.address, s.domain) for s in seen[-1]) == [
        ("carol@remote.test", "other.example"),
        ("dave@remote.test", "example.com"),
    ]


def test_a_thread_per_session_reuses_the_look_ups_connection(
    rt: tuple[Runtime, Counting],
) -> None:
    """libmilter gives every SMTP session a thread of its own: five sessions, one after
    another, each on a new thread, open one read connection between them, not five."""
    _, lookup = rt
    codes: list[list[int]] = []

    def session() -> None:
        ctx = Ctx()
        ctx.connect()
        codes.append(_send(ctx, ["bob@remote.test"], [])[0])

    for _ in range(5):
        t = threading.Thread(target=session)
        t.start()
        t.join()
    assert codes == [[Milter.CONTINUE]] * 5
    assert len(lookup.asked) == 5
    assert lookup.opened == 1
