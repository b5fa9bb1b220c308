"""The adapter through pymilter's TestCtx: the callbacks libmilter would make, in its order.

TestCtx passes the client address as a string, its quarantine() raises, and it takes a
NOREPLY answer for a failure; this subclass passes (address, port) as libmilter does, records
quarantines, and after noting what was negotiated acts as an MTA without no-reply support.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import Milter
import pytest
from Milter import testctx

from postwarden.config import load_config
from postwarden.milter import adapter, effects
from postwarden.milter.notify import Notifier
from postwarden.milter.runtime import Runtime
from postwarden.store import open_db, queries
from postwarden.store.rates import RateStore
from postwarden.store.writer import Writer
from tests.helpers import message, write_config


class Ctx(testctx.TestCtx):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.quarantined: list[str] = []
        self.added: list[tuple[str, str, int]] = []

    def quarantine(self, reason: str) -> None:
        self.quarantined.append(reason)

    def addheader(self, field: str, value: str, idx: int) -> None:
        self.added.append((field, value, idx))

    def _negotiate(self) -> int:
        rc: int = super()._negotiate()
        self.negotiated = self._protocol
        no_reply = sum(
            getattr(Milter, f)
            for f in (
                "P_NR_CONN",
                "P_NR_HELO",
                "P_NR_MAIL",
                "P_NR_RCPT",
                "P_NR_DATA",
                "P_NR_UNKN",
                "P_NR_EOH",
                "P_NR_BODY",
                "P_NR_HDR",
            )
        )
        self._protocol &= ~no_reply
        self._priv._protocol = self._protocol
        return rc

    def connect(
        self,
        ip: str = "192.0.2.10",
        port: int = 40000,
        helo: str = "client.test",
        name: str = "client.test",
        family: int = 2,
    ) -> int:
        self._negotiate()
        self._stage = Milter.M_CONNECT
        rc = Milter.connect_callback(self, name, family, (ip, port) if family == 2 else ip)
        self._stage = None
        return rc if rc != Milter.CONTINUE else self._helo(helo)

    def send(
        self, msg: bytes, sender: str, *rcpts: str, queue_id: str = "ABC123", login: str = ""
    ) -> int:
        self._setsymval("i", queue_id)
        self._setsymval("{auth_authen}", login or None)
        return self._feedFile(io.BytesIO(msg), sender, *rcpts)  # type: ignore[no-any-return]


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    cfg = load_config(write_config(tmp_path))
    writer = Writer(cfg.daemon.store.database, 90)
    writer.start()
    rt = Runtime(
        config=cfg,
        writer=writer,
        rates=RateStore(cfg.daemon.store.database),
        notifier=Notifier("/nonexistent", [], "test", "secret"),
        notice_secret="secret",
    )
    Milter.factory = adapter.factory(rt)
    yield rt
    writer.flush_and_stop()


def rows(rt: Runtime) -> list[dict[str, object]]:
    rt.writer.flush_and_stop()
    return queries.decisions(open_db(rt.writer.path), limit=None)


def test_hosted_from_is_accepted_and_recorded(runtime: Runtime) -> None:
    ctx = Ctx()
    assert ctx.connect() == Milter.CONTINUE
    rc = ctx.send(message(), "alice@example.com", "bob@remote.test", login="alice@example.com")
    assert rc == Milter.ACCEPT
    [r] = rows(runtime)
    assert (r["queue_id"], r["action"], r["identity"]) == (
        "ABC123",
        "accept",
        "sasl:alice@example.com",
    )
    assert r["rcpts"] == ["bob@remote.test"] and r["subject"] == "test"


def test_unhosted_from_is_rejected_with_its_text(runtime: Runtime) -> None:
    ctx = Ctx()
    ctx.connect()
    rc = ctx.send(
        message(from_="x@elsewhere.test"),
        "alice@example.com",
        "b@r.test",
        login="alice@example.com",
    )
    assert rc == Milter.REJECT
    assert ctx._reply[:2] == ("550", "5.7.1")
    assert "domain elsewhere.test is not hosted on this server" in ctx._reply[2]
    [r] = rows(runtime)
    assert r["action"] == "reject"
    assert [x["code"] for x in r["reasons"]] == ["not_hosted"]  # type: ignore[index]


def test_percent_in_reply_text_is_escaped_for_libmilter(runtime: Runtime) -> None:
    ctx = Ctx()
    ctx.connect()
    ctx.send(message(from_="x@100%.test"), "a@example.com", "b@r.test", login="a@example.com")
    assert "%%" in ctx._reply[2] or "%" not in ctx._reply[2]


def test_local_submission_is_recognised_by_the_exact_shape_of_pickup(runtime: Runtime) -> None:
    """Postfix's cleanup emulates a connect from "localhost" [127.0.0.1] port 0, over IPv4;
    nothing else is local (an smtpd unix-socket client, an unknown family, another name)."""
    ctx = Ctx()
    ctx.connect(ip="127.0.0.1", port=0, helo="localhost", name="localhost")
    ctx.send(message(), "alice@example.com", "b@r.test")
    for shape in (
        {"ip": "127.0.0.1", "port": 0, "name": "client.test"},  # another name
        {"ip": "127.0.0.2", "port": 0, "name": "localhost"},  # another address
        {"ip": "/var/run/socket", "port": 0, "name": "localhost", "family": 1},  # AF_UNIX
        {"ip": "127.0.0.1", "port": 0, "name": "localhost", "family": 10},  # another family
    ):
        other = Ctx()
        other.connect(**shape)  # type: ignore[arg-type]
        other.send(message(), "alice@example.com", "b@r.test")
    first, *others = sorted(rows(runtime), key=lambda r: int(r["id"]))  # type: ignore[arg-type]
    assert first["identity"].startswith("local:") and first["outbound"] is True  # type: ignore[union-attr]
    assert [r["outbound"] for r in others] == [False] * 4


def test_inbound_mail_is_passed_and_recorded(runtime: Runtime) -> None:
    ctx = Ctx()
    ctx.connect()
    assert (
        ctx.send(message(from_="x@elsewhere.test"), "x@elsewhere.test", "alice@example.com")
        == Milter.ACCEPT
    )
    [r] = rows(runtime)
    assert r["outbound"] is False and r["reasons"][0]["code"] == "inbound"  # type: ignore[index]


def test_quarantine_action_holds_the_message(tmp_path: Path, runtime: Runtime) -> None:
    cfg = load_config(
        write_config(
            tmp_path / "q",
            '[defaults]\nunknown_from_domain = "quarantine"\n[domains."example.com"]\n',
        )
    )
    runtime.config = cfg
    ctx = Ctx()
    ctx.connect()
    rc = ctx.send(
        message(from_="x@elsewhere.test"), "a@example.com", "b@r.test", login="a@example.com"
    )
    assert rc == Milter.ACCEPT
    assert ctx.quarantined == ["postwarden: from_domain.not_hosted"]


def test_a_crash_in_the_engine_tempfails_and_records_an_error(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*a: object) -> None:
        raise ValueError("engine exploded")

    monkeypatch.setattr(effects, "evaluate", boom)
    ctx = Ctx()
    ctx.connect()
    rc = ctx.send(message(), "alice@example.com", "b@r.test", login="alice@example.com")
    assert rc == Milter.TEMPFAIL
    assert ctx._reply[:2] == ("451", "4.7.1")
    [r] = rows(runtime)
    assert r["action"] == "tempfail" and r["error"] == "decide: ValueError: engine exploded"
    assert r["reasons"][0]["code"] == "error"  # type: ignore[index]


def test_a_crash_in_a_gathering_callback_is_remembered_until_eom(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = Ctx()
    ctx.connect()

    def bad_symval(name: str) -> str:
        raise RuntimeError("macro table broken")

    monkeypatch.setattr(ctx, "getsymval", bad_symval)
    # envfrom cannot reply (noreply), so the message goes on and eom applies on_error.
    rc = ctx.send(message(), "alice@example.com", "b@r.test")
    assert rc == Milter.TEMPFAIL
    [r] = rows(runtime)
    assert "macro table broken" in str(r["error"])


def test_on_error_accept_lets_the_message_through(
    tmp_path: Path, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime.config = load_config(write_config(tmp_path / "a", on_error="accept"))
    monkeypatch.setattr(effects, "evaluate", lambda *a: 1 / 0)
    ctx = Ctx()
    ctx.connect()
    assert ctx.send(message(), "a@example.com", "b@r.test", login="a@example.com") == Milter.ACCEPT
    [r] = rows(runtime)
    assert r["action"] == "accept" and r["error"].startswith("decide: ZeroDivisionError")  # type: ignore[union-attr]


def test_negotiation_asks_only_for_what_is_used(runtime: Runtime) -> None:
    ctx = Ctx()
    ctx.connect()
    proto = ctx.negotiated
    # no reply is awaited for the fact-gathering steps; unknown commands are not sent
    for flag in (
        Milter.P_NR_CONN,
        Milter.P_NR_HELO,
        Milter.P_NR_MAIL,
        Milter.P_NR_HDR,
        Milter.P_NR_BODY,
        Milter.P_NOUNKNOWN,
    ):
        assert proto & flag, hex(flag)
    # RCPT is replied to: a suppressed recipient is refused there (feedback.md)
    assert not proto & Milter.P_NR_RCPT


def test_two_messages_on_one_connection_do_not_share_state(runtime: Runtime) -> None:
    ctx = Ctx()
    ctx.connect()
    ctx.send(
        message(subject="one"),
        "a@example.com",
        "x@r.test",
        "y@r.test",
        queue_id="Q1",
        login="a@example.com",
    )
    ctx.send(
        message(subject="two"), "a@example.com", "z@r.test", queue_id="Q2", login="a@example.com"
    )
    r1, r2 = rows(runtime)
    assert r1["rcpts"] == ["x@r.test", "y@r.test"] and r2["rcpts"] == ["z@r.test"]
    assert (r1["subject"], r2["subject"]) == ("one", "two")


SIGNING_POLICY = """
[domains."example.com"]
keys = [{ selector = "r", file = "r.key" }, { selector = "e", file = "e.key" },
        { selector = "old", file = "old.key", active = false }]
"""


@pytest.fixture
def signing_runtime(tmp_path: Path, runtime: Runtime) -> Runtime:
    from tests.helpers import write_key

    for name, alg in (("r", "rsa"), ("e", "ed25519"), ("old", "rsa")):
        write_key(tmp_path / "s" / "policies" / f"{name}.key", algorithm=alg)
    runtime.config = load_config(write_config(tmp_path / "s", SIGNING_POLICY))
    return runtime


def test_accepted_outbound_mail_gets_one_signature_per_active_key(signing_runtime: Runtime) -> None:
    ctx = Ctx()
    ctx.connect()
    assert (
        ctx.send(message(), "alice@example.com", "b@r.test", login="alice@example.com")
        == Milter.ACCEPT
    )
    signatures = [(f, v, i) for f, v, i in ctx.added if f == "DKIM-Signature"]
    assert [i for _, _, i in signatures] == [0, 0]
    # Message-ID was missing: added before signing, so it is inside the signature
    assert [f for f, _, _ in ctx.added].index("Message-ID") < [f for f, _, _ in ctx.added].index(
        "DKIM-Signature"
    )
    assert all("message-id" in v for _, v, _ in signatures)
    selectors = sorted(v.split(" s=")[1].split(";")[0] for _, v, _ in signatures)
    assert selectors == ["e", "r"]  # the staged key does not sign
    assert all("\r" not in v for _, v, _ in ctx.added)  # LF folding: Postfix writes the CR
    [r] = rows(signing_runtime)
    assert sorted(s["s"] for s in r["signatures"]) == ["e", "r"]  # type: ignore[union-attr]


def test_quarantined_mail_is_signed_too_rejected_and_inbound_mail_is_not(
    signing_runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A held message from a hosted domain (a locked sender's) is signed, so that a release
    # sends it out signed.
    with signing_runtime.rates.transaction("sasl:alice@example.com", [60], datetime.now(UTC)) as tx:
        tx.lock("messages 1/minute", "Q0")
    ctx = Ctx()
    ctx.connect()
    ctx.send(message(), "alice@example.com", "b@r.test", login="Alice@Example.COM")
    assert ctx.quarantined and len([a for a in ctx.added if a[0] == "DKIM-Signature"]) == 2
    ctx.added.clear()
    assert (
        ctx.send(
            message(from_="x@elsewhere.test"), "a@example.com", "b@r.test", login="a@example.com"
        )
        == Milter.REJECT
    )
    assert ctx.send(message(), "a@example.com", "b@r.test") == Milter.ACCEPT  # no login: inbound
    assert ctx.added == []


def test_a_signing_failure_tempfails(
    signing_runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*a: object) -> None:
        raise ValueError("key unusable")

    monkeypatch.setattr(effects, "sign_all", broken)
    ctx = Ctx()
    ctx.connect()
    assert (
        ctx.send(message(), "alice@example.com", "b@r.test", login="alice@example.com")
        == Milter.TEMPFAIL
    )
    [r] = rows(signing_runtime)
    assert r["error"] == "sign: ValueError: key unusable"
