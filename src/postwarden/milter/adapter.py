"""The pymilter adapter: callbacks gather facts; end-of-message decides once and applies the plan.

The policy and config in force at MAIL FROM decide the whole message (one snapshot), however
many reloads happen before end-of-message. Every failure ends at one boundary (eom): the
message gets effects.failed_action (never weaker than a verdict already reached), a complete
error row is written (identity, outbound or not, envelope, headers, the step that failed), and
the daemon goes on.
"""

from __future__ import annotations

import contextlib
import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import replace as dc_replace
from datetime import UTC, datetime
from typing import Any, TypeVar

import Milter

from postwarden.config import Config
from postwarden.milter import effects
from postwarden.milter.notify import NOTICE_DAEMON_NAME
from postwarden.milter.runtime import Runtime
from postwarden.policy import Action, Facts, Reason, Verdict
from postwarden.policy.checks.suppression import rcpt_text
from postwarden.policy.html import may_hold_html
from postwarden.policy.mime import MimeScanner
from postwarden.policy.model import Suppression
from postwarden.policy.route import Route, route
from postwarden.signing import RelaxedBodyHasher, Signature

log = logging.getLogger("postwarden")

# pymilter is untyped: its return codes and decorators, typed once here.
F = TypeVar("F", bound=Callable[..., int])
noreply: Callable[[F], F] = Milter.noreply
nocallback: Callable[[F], F] = Milter.nocallback
CONTINUE: int = Milter.CONTINUE
ACCEPT: int = Milter.ACCEPT
REJECT: int = Milter.REJECT
TEMPFAIL: int = Milter.TEMPFAIL

ERROR_TEXT = "postwarden could not check this message; try again later"


def factory(runtime: Runtime) -> Callable[[], PostwardenMilter]:
    """What Milter.factory is set to: one PostwardenMilter per connection, sharing `runtime`."""

    def make() -> PostwardenMilter:
        return PostwardenMilter(runtime)

    return make


class PostwardenMilter(Milter.Base):  # type: ignore[misc]
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.conn: dict[str, Any] = {}
        # A failure in connect: it applies to every message of the connection (_reset keeps it).
        self.conn_error = ""
        self._reset()

    def _reset(self) -> None:
        self.mail_from = ""
        self.smtputf8 = False
        self.auth_login = ""
        self.rcpts: list[str] = []
        # What the RCPT look-up found for each accepted recipient (lower-cased), every domain's
        # entries: end-of-message takes these instead of asking the store again for them.
        self.rcpt_found: dict[str, tuple[Suppression, ...]] = {}
        self.headers: list[tuple[str, str]] = []
        self.size = 0
        self.error = ""
        self.in_message = False
        # The config in force at MAIL FROM: it decides this message whatever reloads follow.
        self.snapshot: Config | None = None
        # Outbound mail may be signed: its body is canonicalised and hashed as it arrives, and
        # kept when bare HTML may need wrapping.
        self.body_hasher: RelaxedBodyHasher | None = None
        self.body_chunks: list[bytes] | None = None
        # Outbound multipart mail: its MIME structure read as it arrives, bounded in depth.
        self.mime: MimeScanner | None = None
        self.outbound = False

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
                "family": family,
                "daemon_name": self.getsymval("{daemon_name}") or "",
                "hostname": self.getsymval("j") or "",
                "helo": "",
                "local": False,
            }
            # Local submission: sendmail(1) through pickup, or the notice service (an smtpd on
            # a unix socket in public/, which only group postdrop reaches; it names itself).
            self.conn["local"] = is_pickup(family, addr, port, hostname or "") or (
                self.conn["daemon_name"] == NOTICE_DAEMON_NAME and addr in ("", "127.0.0.1", "::1")
            )
            log.debug(
                "connect %s[%s]:%d family=%s local=%s daemon=%s",
                hostname,
                addr,
                port,
                family,
                self.conn["local"],
                self.conn["daemon_name"],
            )
        except Exception as exc:  # noqa: BLE001  (the boundary: remembered, tempfailed at eom)
            self._fail("connect", exc)
            self.conn_error = self.error
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
            self.snapshot = self.runtime.config
            self.mail_from = mailfrom.strip().removeprefix("<").removesuffix(">")
            self.smtputf8 = any(p.upper() == "SMTPUTF8" for p in params)
            self.auth_login = self.getsymval("{auth_authen}") or ""
            policy = self.snapshot.policy
            if route(self._facts(""), policy).outbound:
                self.outbound = True
                self.body_hasher = RelaxedBodyHasher()
                self.body_chunks = [] if policy.headers.wrap_bare_html else None
            log.debug("mail from=<%s> auth=%s", self.mail_from, self.auth_login or "-")
        except Exception as exc:  # noqa: BLE001
            self._fail("envfrom", exc)
        return CONTINUE

    def envrcpt(self, rcpt: str, *params: str) -> int:
        # Replied to (not noreply): a suppressed recipient is refused here, over SMTP.
        address = rcpt.strip().removeprefix("<").removesuffix(">")
        log.debug("rcpt to=<%s>", address)
        refused = self._suppressed_at_rcpt(address)
        if refused is not None:
            return refused
        self.rcpts.append(address)
        return CONTINUE

    def _suppressed_at_rcpt(self, address: str) -> int | None:
        """feedback.md: over SMTP, a recipient suppressed for the envelope sender's domain
        (standing for the From domain) is refused, alone, with why and since when. Never for
        sendmail(1) mail (non_smtpd_milters must not reject at RCPT: eom decides)."""
        lookup = self.runtime.suppressions
        if lookup is None or not self.outbound or self.conn.get("local") or self.error:
            return None
        domain = self.mail_from.rpartition("@")[2].lower()
        if not domain or self.snapshot is None or not self.snapshot.policy.hosted_domain(domain):
            return None
        try:
            # Every domain's entries (what at_rcpt filters), kept for end-of-message's facts.
            entries = tuple(lookup.for_rcpts([address]))
        except Exception as exc:  # noqa: BLE001  (the database, or [store].shared's Redis, down)
            # Failed closed as any failure: remembered, so end-of-message gives the whole
            # message [milter].on_error (tempfail by default) and records it as a decision;
            # never a silent pass.
            log.error("suppression look-up for <%s> failed: %s", address, exc)
            self._fail("envrcpt", exc)
            return None
        self.rcpt_found[address.lower()] = entries
        found = next((x for x in entries if x.applies_to(domain)), None)
        if found is None:
            return None
        log.info("rcpt <%s> refused: suppressed for %s", address, found.domain or "every domain")
        with contextlib.suppress(Milter.error):
            self.setreply("550", "5.7.1", effects.reply_text(rcpt_text(found)))
        return REJECT

    @noreply
    def header(self, name: str, value: str) -> int:
        self.headers.append((name, value))
        self.size += len(name) + len(value) + 4
        return CONTINUE

    @noreply
    def eoh(self) -> int:
        self.size += 2
        if self.outbound and _is_container(self.headers):
            try:
                # The leaves' offsets only (no content): at eom they say whether any
                # text/html part is there to wrap, so the body is not scanned twice.
                self.mime = MimeScanner(self.headers, keep_leaves=True)
            except Exception as exc:  # noqa: BLE001  (remembered, tempfailed at eom)
                self._fail("eoh", exc)
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
                if self.mime is not None:
                    self.mime.feed(chunk)
            except Exception as exc:  # noqa: BLE001  (remembered, tempfailed at eom)
                self._fail("body", exc)
        return CONTINUE

    @nocallback
    def unknown(self, cmd: str) -> int:
        return CONTINUE

    # ---- end of message: decide once, apply the plan -------------------------------------------

    def eom(self) -> int:
        started = time.perf_counter()
        now = datetime.now(UTC)
        config = self.snapshot or self.runtime.config
        facts = Facts()
        r: Route | None = None
        verdict: Verdict | None = None
        signatures: list[Signature] = []
        try:
            facts = self._facts(self.getsymval("i") or "", final=True)
            r = route(facts, config.policy)
            if self.error or self.conn_error:
                raise RuntimeError(self.conn_error or self.error)
            keep = self.body_chunks is not None and (
                self.mime is None or any(x.content_type == "text/html" for x in self.mime.leaves)
            )
            msg = effects.Message(
                self.headers,
                self.body_hasher,
                b"".join(self.body_chunks) if keep and self.body_chunks is not None else None,
            )
            outcome = effects.carry_out(
                facts, msg, self, config, self.runtime.rates, self.runtime.notifier, now, r
            )
            verdict, signatures = outcome.verdict, outcome.signatures
            rc = _return_code(verdict.action)
        except Exception as exc:  # noqa: BLE001  (the one boundary: any failure -> failed_action)
            reached = exc.verdict if isinstance(exc, effects.StepFailed) else None
            step = exc.step if isinstance(exc, effects.StepFailed) else "decide"
            cause = exc.cause if isinstance(exc, effects.StepFailed) else exc
            verdict = self._error_verdict(config, facts, r, reached, step, cause)
            log.error(
                "%s: error at step %s: %s",
                facts.queue_id or "NOQUEUE",
                step,
                "".join(traceback.format_exception(cause)).strip(),
            )
            try:
                rc = self._apply_error(verdict, reached)
            except Exception as again:  # noqa: BLE001  (libmilter must get an answer)
                log.error("%s: could not answer the failure: %r", facts.queue_id, again)
                rc = REJECT if verdict.action == Action.REJECT else TEMPFAIL
        finally:
            self._end_message()
        try:
            self.runtime.record(
                facts, verdict, now, (time.perf_counter() - started) * 1000, signatures
            )
        except Exception as exc:  # noqa: BLE001  (the answer stands; the writer counts its own)
            log.error("%s: decision not recorded: %r", facts.queue_id or "NOQUEUE", exc)
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

    def _facts(self, queue_id: str, final: bool = False) -> Facts:
        """The facts. At end-of-message also what needs a look-up or a scan (the MIME problem,
        the suppressed recipients, whether it is postwarden's own notice): built after the plain
        facts, so that if one of those fails the error row still has everything else."""
        local = bool(self.conn.get("local"))
        facts = Facts(
            tag_key=self.runtime.notice_secret,
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
        if not final:
            return facts
        try:
            mime_problem = ""
            if self.mime is not None:
                self.mime.close()
                mime_problem = self.mime.problem
            return dc_replace(
                facts,
                mime_problem=mime_problem,
                suppressed=self._suppressed(),
                # Asked once, at end-of-message: a notice's token is taken when it is seen.
                system_notice=local
                and self.runtime.is_notice(self.headers, self.mail_from, self.rcpts),
            )
        except Exception as exc:  # noqa: BLE001  (remembered: eom fails the message with these facts)
            self._fail("eom facts", exc)
            return facts

    def _suppressed(self) -> tuple[Suppression, ...]:
        """Every active suppression of this message's recipients (feedback.md): the check
        keeps those for the header From domain. A failed look-up fails the message (eom):
        remembered as the failure, so the message's other facts are still recorded with it."""
        lookup = self.runtime.suppressions
        if lookup is None or not self.outbound or not self.rcpts:
            return ()
        # Recipients looked up at RCPT (over SMTP) are not asked again: one look-up a
        # recipient. What RCPT found stands for the seconds of DATA; sendmail(1) mail, never
        # looked up at RCPT, is asked here.
        unique = list(dict.fromkeys(a.lower() for a in self.rcpts))
        ask = [a for a in unique if a not in self.rcpt_found]
        try:
            fresh = lookup.for_rcpts(ask) if ask else []
        except Exception as exc:  # noqa: BLE001  (the database, or [store].shared's Redis, down)
            self._fail("suppression look-up", exc)  # eom raises it before any decision
            return ()
        by_address: dict[str, list[Suppression]] = {}
        for x in fresh:
            by_address.setdefault(x.address.lower(), []).append(x)
        return tuple(
            x
            for a in unique
            for x in (self.rcpt_found[a] if a in self.rcpt_found else by_address.get(a, []))
        )

    def _error_verdict(
        self,
        config: Config,
        facts: Facts,
        r: Route | None,
        reached: Verdict | None,
        step: str,
        exc: BaseException,
    ) -> Verdict:
        on_error = Action.named(config.daemon.milter.on_error)
        action = effects.failed_action(reached, step, on_error)
        reasons: tuple[Reason, ...] = (Reason("milter", "error", action, ERROR_TEXT),)
        if reached is not None:
            # Keep what was found: the row shows why the message was held or refused.
            reasons = (*reached.reasons, *reasons)
        return Verdict(
            action=action,
            reasons=reasons,
            outbound=r.outbound if r is not None else False,
            identity=r.identity if r is not None else "",
            from_address=reached.from_address if reached else "",
            from_domain=reached.from_domain if reached else "",
            hosted_domain=reached.hosted_domain if reached else "",
            policy_hash=config.policy.hash,
            error=f"{type(exc).__name__}: {exc}",
            step=step,
        )

    def _apply_error(self, verdict: Verdict, reached: Verdict | None) -> int:
        if verdict.action == Action.REJECT:
            reply = reached.reply() if reached is not None else None
            with contextlib.suppress(Milter.error):
                self.setreply("550", "5.7.1", effects.reply_text(reply[2] if reply else ERROR_TEXT))
            return REJECT
        if verdict.action == Action.QUARANTINE:
            try:
                self.quarantine(
                    effects.reply_text(
                        "postwarden: " + ", ".join(r.key for r in verdict.deciding_reasons())
                    )
                )
            except Milter.error:
                return TEMPFAIL
            return ACCEPT
        if verdict.action == Action.TEMPFAIL:
            # The tempfail itself is what matters; libmilter's default text will do.
            with contextlib.suppress(Milter.error):
                self.setreply("451", "4.7.1", ERROR_TEXT)
            return TEMPFAIL
        return ACCEPT


def _is_container(headers: list[tuple[str, str]]) -> bool:
    for name, value in headers:
        if name.lower() == "content-type":
            kind = value.strip().lower()
            return kind.startswith(("multipart/", "message/"))
    return False


def _return_code(action: Action) -> int:
    if action == Action.REJECT:
        return REJECT
    if action == Action.TEMPFAIL:
        return TEMPFAIL
    return ACCEPT  # accepted, or accepted into the hold queue


# Postfix's cleanup, for sendmail(1) mail through pickup (non_smtpd_milters), emulates a connect
# from "localhost", IPv4 127.0.0.1, port 0. No TCP client has source port 0, and smtpd gives a
# unix-socket client family AF_UNIX (pymilter: a path, not an (address, port) pair).
PICKUP_FAMILY = 2  # AF_INET, as pymilter passes it for the emulated connect


def is_pickup(family: int, addr: str, port: int, hostname: str) -> bool:
    return family == PICKUP_FAMILY and addr == "127.0.0.1" and port == 0 and hostname == "localhost"
