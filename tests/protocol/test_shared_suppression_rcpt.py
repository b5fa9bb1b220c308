"""The adapter's suppression look-up with [store].shared, through pymilter's TestCtx and a real
redis-server: refused at RCPT from the shared list; Redis unreachable fails closed as the rest
of the milter does (the look-up failure is remembered and end-of-message gives the message [milter].on_error,
recorded as a decision: tempfail by default; accept is the admin's choice)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from email import message_from_bytes
from pathlib import Path

import Milter
import pytest

from postwarden.config import load_config
from postwarden.milter import adapter
from postwarden.milter.notify import Notifier
from postwarden.milter.runtime import Runtime
from postwarden.sandbox import free_port
from postwarden.store import open_db, queries
from postwarden.store.shared import RedisRateStore
from postwarden.store.writer import Writer
from tests.helpers import message, write_config
from tests.protocol.test_adapter import Ctx
from tests.redisserver import RedisServer

ALICE = "alice@example.com"
NOW = "2026-11-23T10:00:00+00:00"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path_factory.mktemp("redis"))
    srv.start()
    yield srv
    srv.stop()


def _runtime(tmp_path: Path, url: str, on_error: str) -> Runtime:
    cfg = load_config(write_config(tmp_path, daemon_extra=f'shared = "{url}"\n', on_error=on_error))
    writer = Writer(cfg.daemon.store.database, 90)
    writer.start()
    shared = RedisRateStore.open(url, "", cfg.daemon.store.database)
    rt = Runtime(
        config=cfg,
        writer=writer,
        rates=shared,
        notifier=Notifier("/nonexistent", [], "test", "secret"),
        notice_secret="secret",
        suppressions=shared.suppressions,
    )
    Milter.factory = adapter.factory(rt)
    return rt


def _rows(rt: Runtime) -> list[dict[str, object]]:
    rt.writer.flush_and_stop()
    return queries.decisions(open_db(rt.writer.path), limit=None)


def _transaction(ctx: Ctx, rcpts: list[str]) -> tuple[list[int], int]:
    """MAIL, each RCPT (its code), and for what got through DATA to end-of-message."""
    raw = message(from_=ALICE, to=", ".join(rcpts))
    ctx._setsymval("i", "Q1")
    ctx._setsymval("{auth_authen}", ALICE)
    assert ctx._envfrom(f"<{ALICE}>") == Milter.CONTINUE
    codes = [ctx._envrcpt(f"<{r}>") for r in rcpts]
    if Milter.CONTINUE not in codes:
        return codes, 0
    assert ctx._data() == Milter.CONTINUE
    for name, value in message_from_bytes(raw).items():
        ctx._header(name, value)
    ctx._eoh()
    ctx._feed_body(io.BytesIO(raw.replace(b"\r\n", b"\n").split(b"\n\n", 1)[1]))
    return codes, ctx._eom()


def test_a_recipient_in_the_shared_list_is_refused_at_rcpt(
    server: RedisServer, tmp_path: Path
) -> None:
    server.client().flushall()
    rt = _runtime(tmp_path, server.url, "tempfail")
    assert isinstance(rt.rates, RedisRateStore)
    rt.rates.suppressions.suppress("bob@remote.test", "example.com", NOW, "admin", "by hand")
    ctx = Ctx()
    ctx.connect()
    codes, eom = _transaction(ctx, ["bob@remote.test", "carol@remote.test"])
    assert codes == [Milter.REJECT, Milter.CONTINUE] and eom == Milter.ACCEPT
    [r] = _rows(rt)
    assert r["rcpts"] == ["carol@remote.test"] and r["action"] == "accept"


@pytest.mark.parametrize("on_error", ["tempfail", "accept"])
def test_redis_unreachable_at_rcpt_gives_on_error(tmp_path: Path, on_error: str) -> None:
    rt = _runtime(tmp_path, f"redis://127.0.0.1:{free_port()}/0", on_error)
    ctx = Ctx()
    ctx.connect()
    codes, eom = _transaction(ctx, ["bob@remote.test", "carol@remote.test"])
    # the failure is remembered at RCPT; end-of-message gives the message on_error, recorded
    assert codes == [Milter.CONTINUE, Milter.CONTINUE]
    assert eom == (Milter.TEMPFAIL if on_error == "tempfail" else Milter.ACCEPT)
    [r] = _rows(rt)
    assert r["action"] == on_error
    # (the end-of-message look-up of every recipient failed too: the error named is that one)
    assert "ConnectionError" in str(r["error"]), r["error"]
