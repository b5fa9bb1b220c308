"""The plan and its failures, through pymilter's TestCtx with a real SQLite file and the real
`postwarden senders --json` (decisions.md, Actions).

What each failure gets: a failure before a verdict gets [milter].on_error; after a verdict the
message gets the stricter of the two (a held message stays held, a refused one refused); a
failure leaves no count, no lock, no notice and no edit; its row says which step failed and
keeps the identity, the direction and the envelope.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import Milter
import pytest

from postwarden.config import load_config
from postwarden.milter import adapter, effects
from postwarden.milter.notify import LockEvent, Notifier
from postwarden.milter.runtime import Runtime
from postwarden.store import open_db, queries
from postwarden.store.rates import RateStore
from postwarden.store.writer import Writer
from tests.helpers import message, write_config, write_key
from tests.protocol.test_adapter import Ctx

POLICY = """
[domains."example.com"]
keys = [{ selector = "r", file = "r.key" }]

[rate]
messages = ["1/minute"]
recipients = ["100/minute"]
on_exceed = "quarantine"
lock = true
notify = ["postmaster@example.net"]
"""


class RecordingNotifier(Notifier):
    def __init__(self) -> None:
        super().__init__("/nonexistent", ["postmaster@example.net"], "test", "secret")
        self.events: list[LockEvent] = []

    def locked(self, event: LockEvent) -> None:
        self.events.append(event)


def _runtime(root: Path, on_error: str = "tempfail", policy: str = POLICY) -> Runtime:
    write_key(root / "policies" / "r.key")
    cfg = load_config(write_config(root, policy, on_error=on_error))
    writer = Writer(cfg.daemon.store.database, 90)
    writer.start()
    rt = Runtime(
        config=cfg,
        writer=writer,
        rates=RateStore(cfg.daemon.store.database),
        notifier=RecordingNotifier(),
        notice_secret="secret",
    )
    Milter.factory = adapter.factory(rt)
    return rt


@pytest.fixture(autouse=True)
def _no_faults() -> Iterator[None]:
    yield
    effects.FAULTS.clear()


def _fail_at(step: str) -> None:
    def boom() -> None:
        raise OSError(f"injected failure at {step}")

    effects.FAULTS[step] = boom


def senders_json(rt: Runtime) -> list[dict[str, object]]:
    out = subprocess.run(
        [sys.executable, "-m", "postwarden", "--config", str(rt.config.path), "senders", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def rows(rt: Runtime) -> list[dict[str, object]]:
    rt.writer.flush_and_stop()
    return sorted(
        queries.decisions(open_db(rt.writer.path), limit=None),
        key=lambda r: int(r["id"]),  # type: ignore[arg-type]
    )


def send(ctx: Ctx, subject: str, queue_id: str, body: str = "hello") -> int:
    return ctx.send(  # type: ignore[no-any-return]
        message(subject=subject, body=body, extra="Message-ID: <m@example.com>\r\n"),
        "alice@example.com",
        "bob@remote.test",
        queue_id=queue_id,
        login="alice@example.com",
    )


@pytest.mark.parametrize("step", ["sign", "wrap", "edit", "postfix", "commit"])
def test_a_failure_at_any_step_leaves_no_count_no_lock_no_notice_no_edit(
    tmp_path: Path, step: str
) -> None:
    rt = _runtime(tmp_path)
    ctx = Ctx()
    ctx.connect()
    assert send(ctx, "first", "Q1") == Milter.ACCEPT  # uses the 1/minute allowance
    before = senders_json(rt)
    assert before[0]["messages"][0]["used"] == 1 and before[0]["locked"] is False  # type: ignore[index]
    ctx.added.clear()
    _fail_at(step)
    # The second message would break the cap, lock alice and mail the admins.
    body = "<p>bare html</p>" if step == "wrap" else "hello"
    assert send(ctx, "second", "Q2", body) == Milter.TEMPFAIL
    if step not in ("postfix", "commit"):
        # Nothing reached Postfix: no header, no signature, no hold. (At those two steps Postfix
        # has been told some of it, and the tempfail makes it discard the message whole.)
        assert ctx.added == [] and ctx.quarantined == []
    after = senders_json(rt)
    assert after == before  # counts unchanged, no lock
    assert rt.notifier.events == []  # type: ignore[attr-defined]
    r = rows(rt)[-1]
    assert r["action"] == "tempfail" and str(r["error"]).startswith(f"{step}: OSError")
    assert r["identity"] == "sasl:alice@example.com" and r["outbound"] is True
    assert [x["code"] for x in r["reasons"]][-1] == "error"  # type: ignore[index]
    # The reasons found before the failure are kept with it.
    assert "rate.exceeded" in [f"{x['check']}.{x['code']}" for x in r["reasons"]]  # type: ignore[index]


def test_without_a_failure_the_same_message_locks_and_notifies_once(tmp_path: Path) -> None:
    rt = _runtime(tmp_path)
    ctx = Ctx()
    ctx.connect()
    send(ctx, "first", "Q1")
    assert send(ctx, "second", "Q2") == Milter.ACCEPT and ctx.quarantined
    assert [e.identity for e in rt.notifier.events] == ["sasl:alice@example.com"]  # type: ignore[attr-defined]
    assert senders_json(rt)[0]["locked"] is True


def test_on_error_accept_never_weakens_a_hold_or_a_refusal(tmp_path: Path) -> None:
    rt = _runtime(tmp_path, on_error="accept")
    ctx = Ctx()
    ctx.connect()
    send(ctx, "first", "Q1")
    send(ctx, "locks", "Q2")  # alice is locked now
    ctx.quarantined.clear()
    ctx.added.clear()
    _fail_at("sign")
    # A locked sender's message that hits a failure is still held (unsigned, unedited).
    assert send(ctx, "held anyway", "Q3") == Milter.ACCEPT
    assert ctx.quarantined and ctx.added == []
    # A refused one is still refused, with its own text.
    effects.FAULTS.clear()
    _fail_at("edit")
    rc = ctx.send(
        message(from_="x@elsewhere.test"),
        "alice@example.com",
        "b@r.test",
        queue_id="Q4",
        login="alice@example.com",
    )
    assert rc == Milter.REJECT and "not hosted" in ctx._reply[2]
    held, refused = rows(rt)[-2:]
    assert (held["action"], refused["action"]) == ("quarantine", "reject")
    assert held["signatures"] == []


def test_on_error_accept_applies_where_no_verdict_was_reached(tmp_path: Path) -> None:
    rt = _runtime(tmp_path, on_error="accept")
    ctx = Ctx()
    ctx.connect()
    original = effects.evaluate
    try:
        effects.evaluate = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no verdict"))  # type: ignore[assignment]
        assert send(ctx, "x", "Q1") == Milter.ACCEPT
    finally:
        effects.evaluate = original
    [r] = rows(rt)
    assert r["action"] == "accept" and str(r["error"]).startswith("decide: RuntimeError")
    assert r["identity"] == "sasl:alice@example.com"


def test_the_error_row_of_an_inbound_message_says_inbound_and_carries_its_identity(
    tmp_path: Path,
) -> None:
    rt = _runtime(tmp_path)
    _fail_at("edit")
    ctx = Ctx()
    ctx.connect(ip="198.51.100.9")
    rc = ctx.send(message(from_="x@elsewhere.test"), "x@elsewhere.test", "alice@example.com")
    assert rc == Milter.TEMPFAIL
    [r] = rows(rt)
    assert r["outbound"] is False and r["identity"] == "ip:198.51.100.9"
    assert r["mail_from"] == "x@elsewhere.test" and r["rcpts"] == ["alice@example.com"]
    assert r["header_from"] == "x@elsewhere.test" and str(r["error"]).startswith("edit: OSError")


def test_a_reload_between_mail_from_and_end_of_message_does_not_change_its_policy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rt = _runtime(tmp_path / "old")
    old_hash = rt.config.policy.hash
    # The new policy hosts no domain: under it, alice's message would be refused.
    new = load_config(write_config(tmp_path / "new", '[domains."example.org"]\n'))
    assert new.policy.hash != old_hash
    real = adapter.PostwardenMilter.envrcpt

    def reload_meanwhile(self: adapter.PostwardenMilter, *a: str) -> int:
        rt.config = new  # what Daemon.reload does, while the message is in flight
        return real(self, *a)  # type: ignore[no-any-return]

    monkeypatch.setattr(adapter.PostwardenMilter, "envrcpt", reload_meanwhile)
    ctx = Ctx()
    ctx.connect()
    assert send(ctx, "in flight", "Q1") == Milter.ACCEPT
    monkeypatch.setattr(adapter.PostwardenMilter, "envrcpt", real)
    assert send(ctx, "after", "Q2") == Milter.REJECT  # the next message: the new policy
    first, second = rows(rt)
    assert first["policy_hash"] == old_hash and first["signatures"]
    assert second["policy_hash"] == new.policy.hash


def test_a_multipart_message_without_html_is_not_kept_nor_scanned_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The streaming MIME scan already knows there is no text/html part: the wrap never runs."""
    rt = _runtime(tmp_path)

    def no_wrap(*a: object) -> None:
        raise AssertionError("wrap_bare_html ran on a message without HTML")

    monkeypatch.setattr(effects, "wrap_bare_html", no_wrap)
    body = (
        "--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
        "--b\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + "QUJD\r\n" * 2000
        + "--b--\r\n"
    )
    msg = message(
        subject="attachment",
        extra='MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n'
        "Message-ID: <att@example.com>\r\n",
        body=body,
    )
    ctx = Ctx()
    ctx.connect()
    rc = ctx.send(msg, "alice@example.com", "b@r.test", login="alice@example.com")
    assert rc == Milter.ACCEPT
    [r] = rows(rt)
    assert r["signatures"] and r["error"] == ""


def test_signing_is_never_done_inside_the_senders_rate_transaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lock convoy of issue 21: the rate transaction is held for SQL only, never for RSA."""
    rt = _runtime(tmp_path)
    real = effects.sign_all
    held: list[bool] = []

    def watching(*a: object, **k: object) -> object:
        held.append(rt.rates.write_lock.locked())
        return real(*a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(effects, "sign_all", watching)
    ctx = Ctx()
    ctx.connect()
    for i in range(3):  # the second and third break the 1/minute cap: held, and still signed
        send(ctx, f"m{i}", f"Q{i}")
    assert held == [False, False, False]
    assert [len(r["signatures"]) for r in rows(rt)] == [1, 1, 1]  # type: ignore[arg-type]


def test_the_notice_service_is_local_submission_and_other_unix_clients_are_not(
    tmp_path: Path,
) -> None:
    """setup-postfix's notice service (an smtpd on a unix socket only group postdrop reaches)
    names itself with {daemon_name}: its mail is decided as local mail; another unix-socket
    smtpd client is not local."""
    from postwarden.milter.notify import NOTICE_DAEMON_NAME

    rt = _runtime(
        tmp_path, policy=POLICY + '\n[local]\nsend_as = { "www-data" = ["alice@example.com"] }\n'
    )
    for daemon in (NOTICE_DAEMON_NAME, "smtpd-unix"):
        ctx = Ctx()
        ctx._setsymval("{daemon_name}", daemon)
        ctx.connect(
            ip="/var/spool/postfix/public/postwarden-notice", port=0, name="localhost", family=1
        )
        ctx.send(message(subject=daemon), "alice@example.com", "b@r.test", queue_id=daemon)
    notice_path, other = rows(rt)
    assert notice_path["identity"] == "local:www-data" and notice_path["outbound"] is True
    assert other["outbound"] is False


# ---- what the review of the decision path found, each now a test ----------------------------


def test_a_refusal_stands_when_the_senders_store_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store cannot be read (locked for longer than the busy timeout, or down): a message
    already refused by an earlier check is refused, not given on_error = accept."""
    import sqlite3

    rt = _runtime(tmp_path, on_error="accept")

    def broken(*a: object, **k: object) -> None:
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(rt.rates, "transaction", broken)
    ctx = Ctx()
    ctx.connect()
    forged = ctx.send(
        message(from_="ceo@elsewhere.test"),
        "alice@example.com",
        "b@r.test",
        login="alice@example.com",
    )
    assert forged == Milter.REJECT and "not hosted" in ctx._reply[2]
    ordinary = send(ctx, "ordinary", "Q2")
    assert ordinary == Milter.ACCEPT  # the admin's on_error = accept, where no verdict was reached
    refused, accepted = rows(rt)
    assert refused["action"] == "reject" and refused["error"] == ""
    assert accepted["action"] == "accept" and str(accepted["error"]).startswith("count: ")
    assert accepted["signatures"] == []  # unsigned, as on_error = accept says


def test_a_commit_failure_never_lets_a_signed_uncounted_message_leave(tmp_path: Path) -> None:
    rt = _runtime(tmp_path, on_error="accept")
    _fail_at("commit")
    ctx = Ctx()
    ctx.connect()
    assert send(ctx, "x", "Q1") == Milter.TEMPFAIL
    [r] = rows(rt)
    assert r["action"] == "tempfail" and str(r["error"]).startswith("commit: ")


def test_a_failure_in_connect_applies_to_every_message_of_the_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rt = _runtime(tmp_path)

    def boom(*a: object) -> bool:
        raise RuntimeError("connect broke")

    monkeypatch.setattr(adapter, "is_pickup", boom)
    ctx = Ctx()
    ctx.connect(ip="127.0.0.1", port=0, name="localhost")
    assert send(ctx, "one", "Q1") == Milter.TEMPFAIL
    assert send(ctx, "two", "Q2") == Milter.TEMPFAIL  # not forgotten at the next MAIL FROM
    assert [str(r["error"]).startswith("decide: RuntimeError: connect") for r in rows(rt)] == [
        True,
        True,
    ]


def test_an_answer_that_cannot_be_given_still_leaves_a_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rt = _runtime(tmp_path)
    _fail_at("sign")
    ctx = Ctx()
    ctx.connect()

    def refuse(*a: object) -> None:
        raise UnicodeEncodeError("utf-8", "x", 0, 1, "pymilter encodes strictly")

    monkeypatch.setattr(ctx, "setreply", refuse)
    assert send(ctx, "x", "Q1") == Milter.TEMPFAIL
    [r] = rows(rt)
    assert r["action"] == "tempfail" and r["queue_id"] == "Q1"


def test_a_forged_notice_token_is_no_notice_and_keeps_the_facts(tmp_path: Path) -> None:
    """A non-ASCII mac made hmac.compare_digest raise, and the row lost its facts."""
    rt = _runtime(tmp_path)
    ctx = Ctx()
    ctx.connect(ip="127.0.0.1", port=0, name="localhost")
    forged = (
        "From: postwarden <postmaster@test>\r\nTo: a@r.test\r\nSubject: forged\r\n"
        "Message-ID: <n@test>\r\nX-Postwarden-Notice: t=9999999999; mac=\u00e9\r\n"
        "Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n\r\nhi\r\n"
    ).encode()
    ctx.send(forged, "", "a@r.test", queue_id="QF")
    [r] = rows(rt)
    assert r["queue_id"] == "QF" and r["rcpts"] == ["a@r.test"] and r["outbound"] is True
    assert "outbound.notice" not in [f"{x['check']}.{x['code']}" for x in r["reasons"]]  # type: ignore[attr-defined]


# ---- what the speed depends on (issue 21): the sender's transaction holds no libmilter call --


def _calls_inside_the_transaction(
    rt: Runtime, ctx: Ctx, monkeypatch: pytest.MonkeyPatch
) -> list[tuple[str, bool]]:
    """(what Postfix was told, whether the sender's rate transaction was open), in order."""
    calls: list[tuple[str, bool]] = []
    inside = [False]
    real_tx = rt.rates.transaction

    @contextlib.contextmanager
    def watched(*a: Any, **k: Any) -> Iterator[Any]:
        with real_tx(*a, **k) as tx:
            inside[0] = True
            try:
                yield tx
            finally:
                inside[0] = False

    monkeypatch.setattr(rt.rates, "transaction", watched)
    real_add, real_quarantine = ctx.addheader, ctx.quarantine

    def addheader(field: str, value: str, idx: int = -1) -> None:
        calls.append((field, inside[0]))
        real_add(field, value, idx)

    def quarantine(reason: str) -> None:
        calls.append(("quarantine", inside[0]))
        real_quarantine(reason)

    monkeypatch.setattr(ctx, "addheader", addheader)
    monkeypatch.setattr(ctx, "quarantine", quarantine)
    return calls


def test_under_on_error_tempfail_postfix_is_told_outside_the_senders_transaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inside it each libmilter call gives up the GIL and waits to get it back with the
    transaction, and every other sender's, held. Outside it only the hold (or the reply) the
    counts decide is told inside."""
    rt = _runtime(tmp_path)  # on_error = tempfail
    ctx = Ctx()
    ctx.connect()
    calls = _calls_inside_the_transaction(rt, ctx, monkeypatch)
    assert send(ctx, "first", "Q1") == Milter.ACCEPT
    told = [name for name, _ in calls]
    assert told.count("DKIM-Signature") == 1 and "X-Postwarden-Stream" in told
    assert not any(inside for _, inside in calls), calls
    calls.clear()
    # The second breaks the 1/minute cap: held, signed as the first; the hold told inside.
    assert send(ctx, "second", "Q2") == Milter.ACCEPT
    assert [(n, i) for n, i in calls if i] == [("quarantine", True)], calls
    assert ("DKIM-Signature", False) in calls
    first, second = rows(rt)
    assert (first["action"], second["action"]) == ("accept", "quarantine")
    assert second["signatures"] and first["error"] == second["error"] == ""


def test_under_on_error_accept_all_is_told_inside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure after the edits were told would have to refuse the message (never signed but
    uncounted), where on_error = accept lets it leave unsigned: so they wait for the counts."""
    rt = _runtime(tmp_path, on_error="accept")
    ctx = Ctx()
    ctx.connect()
    calls = _calls_inside_the_transaction(rt, ctx, monkeypatch)
    assert send(ctx, "first", "Q1") == Milter.ACCEPT
    assert calls and all(inside for _, inside in calls), calls


REFUSING_CAP = """
[domains."example.com"]
keys = [{ selector = "r", file = "r.key" }]

[rate]
messages = ["100/minute"]
recipients = ["2/minute"]
on_exceed = "reject"
lock = true
notify = ["postmaster@example.net"]
"""


def test_a_message_whose_recipients_alone_break_a_refusing_cap_locks_its_sender(
    tmp_path: Path,
) -> None:
    """The first evaluation, before the sender's counts are read, already finds the cap broken
    (3 recipients against 2/minute): its refusal comes from the rate check, so the lock it
    carries is written in the transaction before its notice goes, not mailed without a lock."""
    rt = _runtime(tmp_path, policy=REFUSING_CAP)
    ctx = Ctx()
    ctx.connect()
    msg = message(subject="too many", extra="Message-ID: <m@example.com>\r\n")
    rc = ctx.send(
        msg, "alice@example.com", "a@r.test", "b@r.test", "c@r.test", login="alice@example.com"
    )
    assert rc == Milter.REJECT and "over its cap" in ctx._reply[2]
    assert [e.identity for e in rt.notifier.events] == ["sasl:alice@example.com"]  # type: ignore[attr-defined]
    [who] = senders_json(rt)
    assert who["locked"] is True
    [r] = rows(rt)
    assert r["action"] == "reject" and r["error"] == ""


def test_a_failed_early_tell_does_not_lose_the_lock_of_a_message_the_counts_refuse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shared part is told before the counts are read; when the counts then refuse the
    message, Postfix discards it anyway, so its failure changes nothing: the refusal stands
    with its lock and notice."""
    rt = _runtime(tmp_path, policy=REFUSING_CAP.replace('"2/minute"', '"3/minute"'))
    ctx = Ctx()
    ctx.connect()
    msg = message(subject="one", extra="Message-ID: <m@example.com>\r\n")
    rcpts = ("a@r.test", "b@r.test")
    assert ctx.send(msg, "alice@example.com", *rcpts, login="alice@example.com") == Milter.ACCEPT

    def broken(field: str, value: str, idx: int = -1) -> None:
        raise Milter.error("cannot add header")

    monkeypatch.setattr(ctx, "addheader", broken)
    # 2 + 2 > 3: the counts refuse it; the early tell of its signature failed meanwhile.
    rc = ctx.send(msg, "alice@example.com", *rcpts, queue_id="Q2", login="alice@example.com")
    assert rc == Milter.REJECT
    assert senders_json(rt)[0]["locked"] is True
    assert [e.identity for e in rt.notifier.events] == ["sasl:alice@example.com"]  # type: ignore[attr-defined]
    _, refused = rows(rt)
    assert refused["action"] == "reject" and refused["error"] == ""
