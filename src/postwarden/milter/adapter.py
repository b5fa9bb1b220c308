"""The pymilter adapter: callbacks gather facts, end-of-message decides once and applies.

Every failure while handling a message ends at one boundary (_decide's caller in eom): the
message gets [milter].on_error, an error row is written, and the daemon goes on.
"""

from __future__ import annotations

import contextlib
import logging
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import Milter

from postwarden.milter.notify import NOTICE_HEADER, LockEvent, is_notice
from postwarden.milter.runtime import Runtime
from postwarden.policy import Action, Facts, Reason, Verdict, evaluate
from postwarden.policy.html import may_hold_html, wrap_bare_html
from postwarden.policy.hygiene import headers_after
from postwarden.policy.identity import identity, matches_outbound
from postwarden.policy.model import HeaderEdit
from postwarden.signing import RelaxedBodyHasher, Signature, sign

log = logging.getLogger("postwarden")

# pymilter is untyped: its return codes and decorators, typed once here.
F = TypeVar("F", bound=Callable[..., int])
noreply: Callable[[F], F] = Milter.noreply
nocallback: Callable[[F], F] = Milter.nocallback
CONTINUE: int = Milter.CONTINUE
ACCEPT: int = Milter.ACCEPT
REJECT: int = Milter.REJECT
TEMPFAIL: int = Milter.TEMPFAIL

# Set by the daemon before libmilter starts; one Runtime for every connection.
RUNTIME: Runtime | None = None

ERROR_TEXT = "postwarden could not check this message; try again later"
MAX_REPLY = 900  # an SMTP reply line stays well under 1000 octets with code and prefix


def _reply_text(text: str) -> str:
    # libmilter treats the text as a format string and refuses CR or LF.
    text = text.replace("\r", " ").replace("\n", " ").replace("%", "%%")
    return text[:MAX_REPLY]


class PostwardenMilter(Milter.Base):  # type: ignore[misc]
    def __init__(self) -> None:
        assert RUNTIME is not None, "the daemon sets RUNTIME before libmilter starts"
        self.runtime: Runtime = RUNTIME
        self.conn: dict[str, Any] = {}
        self._reset()

    def _reset(self) -> None:
        self.mail_from = ""
        self.smtputf8 = False
        self.auth_login = ""
        self.rcpts: list[str] = []
        self.headers: list[tuple[str, str]] = []
        self.size = 0
        self.error = ""
        self.in_message = False
        # Outbound mail may be signed: its body is canonicalised and hashed as it arrives, and
        # kept when bare HTML may need wrapping.
        self.body_hasher: RelaxedBodyHasher | None = None
        self.body_chunks: list[bytes] | None = None

    def _fail(self, where: str, exc: BaseException) -> None:
        # Remember the first failure; eom turns it into on_error. A noreply callback cannot.
        if not self.error:
            self.error = f"{where}: {type(exc).__name__}: {exc}"
            log.error("%s failed: %s", where, "".join(traceback.format_exception(exc)).strip())

    # ---- callbacks: gather facts only --------------------------------------------------------

    @noreply
    def connect(self, hostname: str, family: int, hostaddr: Any) -> int:
        try:
            addr, port = "", 0
            if isinstance(hostaddr, tuple) and hostaddr:
                addr = str(hostaddr[0])
                port = int(hostaddr[1]) if len(hostaddr) > 1 else 0
            self.conn = {
                "client_name": hostname or "",
                "client_addr": addr,
                "client_port": port,
                "daemon_name": self.getsymval("{daemon_name}") or "",
                "hostname": self.getsymval("j") or "",
                "helo": "",
                # Postfix's cleanup (non_smtpd_milters: sendmail(1) via pickup) emulates a
                # connect from "localhost" 127.0.0.1 port 0; no TCP client has source port 0.
                "local": port == 0,
            }
            log.debug(
                "connect %s[%s]:%d local=%s daemon=%s",
                hostname,
                addr,
                port,
                self.conn["local"],
                self.conn["daemon_name"],
            )
        except Exception as exc:  # noqa: BLE001  (the boundary: remembered, tempfailed at eom)
            self._fail("connect", exc)
        return CONTINUE

    @noreply
    def hello(self, hostname: str) -> int:
        self.conn["helo"] = hostname or ""
        log.debug("helo %s", hostname)
        return CONTINUE

    @noreply
    def envfrom(self, mailfrom: str, *params: str) -> int:
        self._reset()
        try:
            self.in_message = True
            self.runtime.message_started()
            self.mail_from = mailfrom.strip().removeprefix("<").removesuffix(">")
            self.smtputf8 = any(p.upper() == "SMTPUTF8" for p in params)
            self.auth_login = self.getsymval("{auth_authen}") or ""
            policy = self.runtime.policy
            if matches_outbound(self._facts(""), policy.outbound):
                self.body_hasher = RelaxedBodyHasher()
                self.body_chunks = [] if policy.headers.wrap_bare_html else None
            log.debug("mail from=<%s> auth=%s", self.mail_from, self.auth_login or "-")
        except Exception as exc:  # noqa: BLE001
            self._fail("envfrom", exc)
        return CONTINUE

    @noreply
    def envrcpt(self, rcpt: str, *params: str) -> int:
        self.rcpts.append(rcpt.strip().removeprefix("<").removesuffix(">"))
        log.debug("rcpt to=<%s>", self.rcpts[-1])
        return CONTINUE

    @noreply
    def header(self, name: str, value: str) -> int:
        self.headers.append((name, value))
        self.size += len(name) + len(value) + 4
        return CONTINUE

    @noreply
    def eoh(self) -> int:
        self.size += 2
        if self.body_chunks is not None and not may_hold_html(self.headers):
            self.body_chunks = None  # nothing to wrap: neither keep nor parse the body
        return CONTINUE

    @noreply
    def body(self, chunk: bytes) -> int:
        self.size += len(chunk)
        if self.body_chunks is not None:
            self.body_chunks.append(chunk)
        if self.body_hasher is not None:
            try:
                self.body_hasher.update(chunk)
            except Exception as exc:  # noqa: BLE001  (remembered, tempfailed at eom)
                self._fail("body", exc)
        return CONTINUE

    @nocallback
    def unknown(self, cmd: str) -> int:
        return CONTINUE

    # ---- end of message: decide once, apply ----------------------------------------------------

    def eom(self) -> int:
        started = time.perf_counter()
        now = datetime.now(UTC)
        queue_id = ""
        facts = Facts()
        signatures: list[Signature] = []
        try:
            queue_id = self.getsymval("i") or ""
            facts = self._facts(queue_id)
            if self.error:
                raise RuntimeError(self.error)
            verdict = self._decide(facts, now)
            signatures = self._sign(verdict, int(now.timestamp()))
            rc = self._apply(verdict)
        except Exception as exc:  # noqa: BLE001  (the one boundary: any failure -> on_error)
            verdict = self._error_verdict(exc)
            log.error(
                "%s: error handling message: %s",
                queue_id or "NOQUEUE",
                "".join(traceback.format_exception(exc)).strip(),
            )
            rc = self._apply_error(verdict)
        finally:
            self._end_message()
        self.runtime.record(facts, verdict, now, (time.perf_counter() - started) * 1000, signatures)
        return rc

    def abort(self) -> int:
        self._end_message()
        self._reset()
        return CONTINUE

    def close(self) -> int:
        self._end_message()
        return CONTINUE

    def _end_message(self) -> None:
        if self.in_message:
            self.in_message = False
            self.runtime.message_ended()

    def _facts(self, queue_id: str) -> Facts:
        notice = ""
        message_id = ""
        for name, value in self.headers:
            lname = name.lower()
            if lname == NOTICE_HEADER.lower():
                notice = value
            elif lname == "message-id":
                message_id = value
        local = bool(self.conn.get("local"))
        return Facts(
            system_notice=local and is_notice(self.runtime.notice_secret, message_id, notice),
            queue_id=queue_id,
            hostname=self.conn.get("hostname", ""),
            client_addr=self.conn.get("client_addr", ""),
            client_port=self.conn.get("client_port", 0),
            client_name=self.conn.get("client_name", ""),
            helo=self.conn.get("helo", ""),
            daemon_name=self.conn.get("daemon_name", ""),
            auth_login=self.auth_login,
            local_submission=local,
            smtputf8=self.smtputf8,
            mail_from=self.mail_from,
            rcpts=tuple(self.rcpts),
            headers=tuple(self.headers),
            size=self.size,
        )

    def _decide(self, facts: Facts, now: datetime) -> Verdict:
        policy = self.runtime.policy
        if facts.system_notice or not matches_outbound(facts, policy.outbound):
            return evaluate(facts, policy, now)
        # Read the sender's counts, decide and record in one transaction: exact windows.
        who = identity(facts)
        with self.runtime.rates.transaction(who, policy.rate_windows(), now) as tx:
            verdict = evaluate(facts, policy, now, tx.state)
            if verdict.count:
                tx.count(len(facts.rcpts), facts.queue_id)
            if verdict.lock_cap and tx.state.lock is None:
                tx.lock(verdict.lock_cap, facts.queue_id)
                locked = LockEvent(who, verdict.lock_cap, facts.queue_id, now.isoformat())
            else:
                locked = None
        if locked is not None:
            log.warning("%s: %s locked: it broke its cap of %s", facts.queue_id, who, locked.cap)
            self.runtime.notifier.locked(locked)
        return verdict

    def _sign(self, verdict: Verdict, timestamp: int) -> list[Signature]:
        """Sign an accepted or quarantined outbound message from a hosted domain with each of
        the domain's active keys, over the headers as they will leave."""
        if (
            not verdict.outbound
            or not verdict.hosted_domain
            or verdict.action not in (Action.ACCEPT, Action.QUARANTINE)
        ):
            return []
        self._edit_headers(verdict.edits)
        leaving = headers_after(self.headers, verdict.edits)
        self._wrap_html(verdict, leaving)
        keys = [k for k in self.runtime.config.keys.get(verdict.hosted_domain, []) if k.active]
        if not keys:
            return []
        if self.body_hasher is None:
            raise RuntimeError("outbound message without a body hash")
        body_hash = self.body_hasher.digest_b64()
        headers = [
            (name.encode("ascii", "surrogateescape"), value.encode("utf-8", "surrogateescape"))
            for name, value in leaving
        ]
        signatures = [sign(headers, body_hash, key, timestamp) for key in keys]
        for signature in signatures:
            # Postfix takes LF-folded header values from a milter and writes CRLF itself.
            self.addheader("DKIM-Signature", signature.value.replace("\r\n", "\n"), 0)
        return signatures

    def _wrap_html(self, verdict: Verdict, headers: list[tuple[str, str]]) -> None:
        if not verdict.wrap_html or self.body_chunks is None:
            return
        body = b"".join(self.body_chunks)
        wrapped = wrap_bare_html(headers, body)
        if wrapped is None:
            return
        for i in range(0, len(wrapped), 65536):
            self.replacebody(wrapped[i : i + 65536])
        # The signature covers the body as it will leave.
        self.body_hasher = RelaxedBodyHasher()
        self.body_hasher.update(wrapped)
        log.debug("wrapped bare HTML (%d -> %d octets)", len(body), len(wrapped))

    def _edit_headers(self, edits: tuple[HeaderEdit, ...]) -> None:
        """Before signing: the signature covers the headers as they will leave."""
        for edit in edits:
            if edit.op == "remove":
                self.chgheader(edit.name, edit.index, None)
            else:
                self.addheader(edit.name, edit.value)

    def _apply(self, verdict: Verdict) -> int:
        reply = verdict.reply()
        if verdict.action == Action.REJECT and reply:
            self.setreply(reply[0], reply[1], _reply_text(reply[2]))
            return REJECT
        if verdict.action == Action.TEMPFAIL and reply:
            self.setreply(reply[0], reply[1], _reply_text(reply[2]))
            return TEMPFAIL
        if verdict.action == Action.QUARANTINE:
            reasons = "; ".join(r.key for r in verdict.deciding_reasons())
            self.quarantine(_reply_text(f"postwarden: {reasons}"))
        return ACCEPT

    def _error_verdict(self, exc: BaseException) -> Verdict:
        on_error = Action.named(self.runtime.config.daemon.milter.on_error)
        return Verdict(
            action=on_error,
            reasons=(Reason("milter", "error", on_error, ERROR_TEXT),),
            policy_hash=self.runtime.policy.hash,
            error=f"{type(exc).__name__}: {exc}",
        )

    def _apply_error(self, verdict: Verdict) -> int:
        if verdict.action == Action.TEMPFAIL:
            # The tempfail itself is what matters; libmilter's default text will do.
            with contextlib.suppress(Milter.error):
                self.setreply("451", "4.7.1", ERROR_TEXT)
            return TEMPFAIL
        return ACCEPT
