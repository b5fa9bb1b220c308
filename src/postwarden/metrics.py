"""The Prometheus endpoint ([metrics].listen) and the admin's mail without one (issue 20).

Two kinds of metric, so a scrape never touches a libmilter thread:

- counters and the decision-time histogram, raised in Runtime.record() with one increment
  each (decisions by action, by reason code, errors by step, signatures by domain and
  algorithm, locks, reloads by result);
- gauges computed in the scrape's own thread by `Collector`: held messages by reason (the hold
  queue from `postqueue -j` joined with the decision rows), the writer's queue depth and rows
  dropped or failed, notices sent and failed, unlocks and locked senders, each domain's last
  dns-check findings, the DMARC pass share per domain. Everything read from Postfix or the
  database is cached SCRAPE_CACHE_S, and one scrape at a time computes it: a scrape storm
  runs postqueue at most once per SCRAPE_CACHE_S.

Labels stay bounded: actions, reason codes the checks declare (anything else is "other"),
steps, hosted domains and DKIM algorithms. Never a sender, recipient or identity.

`Watch` is the same knowledge as mail: a daemon thread that every [metrics].watch_seconds tells
[rate].notify when the hold queue holds more than [metrics].notify_held_over messages, or the
writer lost rows, through the lock notices' Notifier.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import logging
import os
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector as CollectorBase

from postwarden.policy.model import Action, Facts, LockSender, Verdict
from postwarden.store import metrics as store_metrics
from postwarden.store import open_db, records

if TYPE_CHECKING:
    from postwarden.config import Config
    from postwarden.milter.notify import AdminNotice, Notifier
    from postwarden.signing import Signature
    from postwarden.store.writer import Writer

log = logging.getLogger("postwarden")

SCRAPE_CACHE_S = 15.0  # what postqueue and the database say is reused this long
OTHER = "other"  # a label value outside the bounded set
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
DNS_STATUSES = ("pass", "warn", "fail", "unknown")
T = TypeVar("T")

# No *_created series beside every counter: half the series, none of them used by the rules.
disable_created_metrics()  # type: ignore[no-untyped-call]


def known_reasons() -> frozenset[str]:
    """Every reason key a decision may carry: the registered checks' codes and milter.error."""
    from postwarden.policy import checks as _  # noqa: F401  (registers the checks)
    from postwarden.policy.registry import checks

    return frozenset({f"{c.name}.{code}" for c in checks() for code in c.codes} | {"milter.error"})


class Metrics:
    """The daemon's counters: each raised once per decision, nothing else on the mail path."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.decisions = Counter(
            "postwarden_decisions", "Decisions by action", ["action"], registry=r
        )
        self.reasons = Counter(
            "postwarden_decision_reasons",
            "Reasons found, by reason code (check.code) and the action each asked for",
            ["reason", "action"],
            registry=r,
        )
        self.errors = Counter(
            "postwarden_decision_errors",
            "Decisions that failed, by the step of the plan that failed",
            ["step"],
            registry=r,
        )
        self.signatures = Counter(
            "postwarden_signatures",
            "DKIM signatures added, by signing domain and algorithm",
            ["domain", "algorithm"],
            registry=r,
        )
        self.duration = Histogram(
            "postwarden_decision_seconds",
            "Time from end-of-message to the decision applied",
            buckets=BUCKETS,
            registry=r,
        )
        self.locks = Counter("postwarden_locks", "Senders locked by this daemon", registry=r)
        self.reloads = Counter(
            "postwarden_reloads", "Policy reloads, by result (ok, refused)", ["result"], registry=r
        )
        self.reload_ok = Gauge(
            "postwarden_reload_last_ok",
            "1 when the last reload (or the start) was taken",
            registry=r,
        )
        self.reload_ok.set(1)
        for action in Action:
            self.decisions.labels(str(action))  # every action shows, at 0, from the start
        for result in ("ok", "refused"):
            self.reloads.labels(result)
        self._reasons = known_reasons()
        self._domains: frozenset[str] = frozenset()

    def hosted(self, domains: Iterable[str]) -> None:
        """The signing domains a label may name (the policy's [domains]; reset on reload)."""
        self._domains = frozenset(d.lower() for d in domains)

    def reason_label(self, key: str) -> str:
        return key if key in self._reasons else OTHER

    def domain_label(self, domain: str) -> str:
        d = domain.lower().rstrip(".")
        return d if d in self._domains else OTHER

    def observe(
        self,
        facts: Facts,
        verdict: Verdict,
        duration_ms: float,
        signatures: list[Signature],
    ) -> None:
        """One decision: a handful of increments, no I/O, no sender-written label."""
        self.decisions.labels(str(verdict.action)).inc()
        for r in verdict.reasons:
            self.reasons.labels(self.reason_label(r.key), str(r.action)).inc()
        if verdict.step:
            self.errors.labels(verdict.step).inc()
        elif verdict.of(LockSender):
            self.locks.inc(len(verdict.of(LockSender)))
        for s in signatures:
            self.signatures.labels(self.domain_label(s.domain), s.algorithm).inc()
        self.duration.observe(duration_ms / 1000)

    def reloaded(self, ok: bool) -> None:
        self.reloads.labels("ok" if ok else "refused").inc()
        self.reload_ok.set(1 if ok else 0)


# ---- scrape time ------------------------------------------------------------------------------


class Cached:
    """A value recomputed at most once per `ttl` seconds, by one caller at a time: the others
    wait for it and take the same value."""

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.clock = clock
        self._lock = threading.Lock()
        self._values: dict[str, tuple[float, Any]] = {}
        self.computed = 0  # how many times a value was computed (the tests count them)

    def get(self, name: str, compute: Callable[[], T]) -> T:
        with self._lock:
            hit = self._values.get(name)
            if hit is not None and self.clock() - hit[0] < self.ttl:
                return hit[1]  # type: ignore[no-any-return]
            value = compute()
            self.computed += 1
            self._values[name] = (self.clock(), value)
            return value


@dataclass
class HoldScan:
    """The hold queue as `postqueue -j` shows it, by the reason its decision row gives."""

    ok: bool = True
    by_reason: dict[str, int] = field(default_factory=dict)
    error: str = ""

    @property
    def total(self) -> int:
        return sum(self.by_reason.values())


def held_reason(reasons_json: str) -> str:
    """The reason a message was held: its first reason that asked for quarantine."""
    try:
        reasons = json.loads(reasons_json or "[]")
    except ValueError:
        return "unknown"
    if not isinstance(reasons, list):
        return "unknown"
    keys = [
        f"{r.get('check')}.{r.get('code')}"
        for r in reasons
        if isinstance(r, dict) and r.get("action") == "quarantine"
    ]
    return keys[0] if keys else "unknown"


def scan_hold_queue(config: Config, label: Callable[[str], str]) -> HoldScan:
    from postwarden import quarantine

    try:
        held = quarantine.held(config.daemon.postfix.config_directory)
    except (quarantine.PostfixError, ValueError, KeyError) as exc:
        return HoldScan(ok=False, error=str(exc))
    by_id = {h.queue_id: "unknown" for h in held}
    db_path = Path(config.daemon.store.database)
    if by_id and db_path.exists():
        db = open_db(db_path, readonly=True)
        try:
            for queue_id, _, _, _, _, _, reasons in records.decisions_by_queue_id(db, list(by_id)):
                by_id[queue_id] = held_reason(reasons)
        finally:
            db.conn.close()
    out: dict[str, int] = {}
    for reason in by_id.values():
        key = reason if reason == "unknown" else label(reason)
        out[key] = out.get(key, 0) + 1
    return HoldScan(ok=True, by_reason=out)


@dataclass
class StoreView:
    unlocks: int = 0
    locks: int = 0
    locked: int = 0
    dns: dict[str, dict[str, int]] = field(default_factory=dict)  # domain -> status -> n
    dns_at: dict[str, float] = field(default_factory=dict)
    dmarc: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # messages, pass, own


def read_store(config: Config, now: datetime) -> StoreView:
    from postwarden.reports.summary import readiness

    view = StoreView()
    path = Path(config.daemon.store.database)
    if not path.exists():
        return view
    hosted = set(config.policy.domains) | {"server"}
    db = open_db(path, readonly=True)
    try:
        counts = store_metrics.audit_counts(db, ("lock", "unlock"))
        view.locks, view.unlocks = counts["lock"], counts["unlock"]
        view.locked = store_metrics.locked_senders(db)
        for domain, run_at, _, status, _, _ in records.latest_dns_findings(db):
            if domain not in hosted or status not in DNS_STATUSES:
                continue
            per = view.dns.setdefault(domain, dict.fromkeys(DNS_STATUSES, 0))
            per[status] += 1
            with contextlib.suppress(ValueError):
                view.dns_at[domain] = datetime.fromisoformat(run_at).timestamp()
        for domain, r in readiness(db, config, now).items():
            if domain in config.policy.domains:
                view.dmarc[domain] = (r.messages, r.passed, r.own_dkim_failures)
    finally:
        db.conn.close()
    return view


class Collector(CollectorBase):
    """The gauges, computed when Prometheus asks, in the HTTP server's thread."""

    def __init__(
        self,
        config: Callable[[], Config],
        writer: Writer,
        notifier: Notifier,
        metrics: Metrics,
        in_flight: Callable[[], int],
        cache: Cached | None = None,
    ) -> None:
        self.config = config
        self.writer = writer
        self.notifier = notifier
        self.metrics = metrics
        self.in_flight = in_flight
        self.cache = cache or Cached(SCRAPE_CACHE_S)

    def snapshot(self) -> tuple[HoldScan, StoreView]:
        """What Postfix and the database say, read together and cached together: one scrape
        sees one moment, and a storm of scrapes reads them once per SCRAPE_CACHE_S."""
        cfg = self.config()
        return self.cache.get(
            "snapshot",
            lambda: (
                scan_hold_queue(cfg, self.metrics.reason_label),
                read_store(cfg, datetime.now(UTC)),
            ),
        )

    def hold(self) -> HoldScan:
        return self.snapshot()[0]

    def describe(self) -> Iterator[Metric]:
        return iter(())  # computed at scrape time only: registering must not run postqueue

    def collect(self) -> Iterator[Metric]:
        scan, view = self.snapshot()
        held = GaugeMetricFamily(
            "postwarden_held_messages",
            "Messages in Postfix's hold queue, by the reason postwarden held them",
            labels=["reason"],
        )
        for reason, n in sorted(scan.by_reason.items()):
            held.add_metric([reason], n)
        yield held
        yield GaugeMetricFamily(
            "postwarden_hold_queue_up", "1 when postqueue -j answered", value=int(scan.ok)
        )
        yield GaugeMetricFamily(
            "postwarden_writer_queue_depth",
            "Rows waiting for the database writer",
            value=self.writer.depth,
        )
        yield CounterMetricFamily(
            "postwarden_writer_rows_dropped",
            "Rows never queued: the writer's queue stayed full",
            value=self.writer.dropped,
        )
        yield CounterMetricFamily(
            "postwarden_writer_rows_failed",
            "Rows an exception kept out of the database",
            value=self.writer.failed,
        )
        yield CounterMetricFamily(
            "postwarden_notices_sent", "Notices mailed to [rate].notify", value=self.notifier.sent
        )
        yield CounterMetricFamily(
            "postwarden_notices_failed",
            "Notices that could not be submitted",
            value=self.notifier.failed,
        )
        yield GaugeMetricFamily(
            "postwarden_messages_in_flight", "Messages being decided now", value=self.in_flight()
        )
        yield CounterMetricFamily(
            "postwarden_unlocks",
            "Senders unlocked by an admin (the audit trail)",
            value=view.unlocks,
        )
        yield GaugeMetricFamily(
            "postwarden_locked_senders", "Senders locked now", value=view.locked
        )
        dns = GaugeMetricFamily(
            "postwarden_dns_check_findings",
            "Each domain's findings in its last dns-check, by status",
            labels=["domain", "status"],
        )
        dns_at = GaugeMetricFamily(
            "postwarden_dns_check_timestamp_seconds",
            "When each domain was last checked",
            labels=["domain"],
        )
        for domain, per in sorted(view.dns.items()):
            for status in DNS_STATUSES:
                dns.add_metric([domain, status], per[status])
            if domain in view.dns_at:
                dns_at.add_metric([domain], view.dns_at[domain])
        yield dns
        yield dns_at
        share = GaugeMetricFamily(
            "postwarden_dmarc_pass_ratio",
            "Share of reported mail passing DMARC (DKIM or SPF aligned), [reports].ready_days",
            labels=["domain"],
        )
        reported = GaugeMetricFamily(
            "postwarden_dmarc_reported_messages",
            "Messages in DMARC aggregate reports, [reports].ready_days",
            labels=["domain"],
        )
        own = GaugeMetricFamily(
            "postwarden_dmarc_own_dkim_failures",
            "Reported messages from this server's addresses whose DKIM failed",
            labels=["domain"],
        )
        for domain, (messages, passed, own_fail) in sorted(view.dmarc.items()):
            reported.add_metric([domain], messages)
            own.add_metric([domain], own_fail)
            if messages:
                share.add_metric([domain], passed / messages)
        yield share
        yield reported
        yield own


# ---- serving --------------------------------------------------------------------------------


class _UnixHandler(http.server.BaseHTTPRequestHandler):
    server: UnixMetricsServer

    def do_GET(self) -> None:
        if self.path.split("?")[0] not in ("/", "/metrics"):
            self.send_error(404)
            return
        try:
            body = generate_latest(self.server.registry)
        except Exception as exc:  # noqa: BLE001  (a failed scrape is a 500, never a dead server)
            log.error("metrics: scrape failed: %r", exc)
            self.send_error(500)
            return
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE_LATEST)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the daemon's log is for mail


class UnixMetricsServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, registry: CollectorRegistry) -> None:
        self.registry = registry
        with contextlib.suppress(FileNotFoundError):
            if Path(path).is_socket():
                os.unlink(path)  # a socket left by a daemon that died
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        old = os.umask(0o117)
        try:
            super().__init__(path, _UnixHandler)
        finally:
            os.umask(old)


@dataclass
class Endpoint:
    listen: str
    close: Callable[[], None]


def serve(listen: str, registry: CollectorRegistry) -> Endpoint:
    """Serve /metrics on "ADDRESS:PORT" (prometheus_client's HTTP server) or "unix:/path" (a
    small http.server on an AF_UNIX socket, mode 0660), from threads of their own."""
    if listen.startswith("unix:"):
        path = listen[5:]
        server = UnixMetricsServer(path, registry)
        thread = threading.Thread(
            target=server.serve_forever, name="postwarden-metrics", daemon=True
        )
        thread.start()

        def close_unix() -> None:
            server.shutdown()
            server.server_close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

        return Endpoint(listen, close_unix)
    host, _, port = listen.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    wsgi, _thread = start_http_server(int(port), addr=host, registry=registry)

    def close_tcp() -> None:
        wsgi.shutdown()
        wsgi.server_close()

    return Endpoint(listen, close_tcp)


def scrape_unix(path: str, timeout: float = 10.0) -> str:
    """GET /metrics over a unix socket (the tests, and an admin without curl --unix-socket)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.0 200") and not head.startswith(b"HTTP/1.1 200"):
        raise OSError(f"metrics: {head.splitlines()[0].decode(errors='replace')}")
    return body.decode()


# ---- mail to the admin without Prometheus ----------------------------------------------------


class Watch:
    """Every watch_seconds: the hold queue over [metrics].notify_held_over, or rows the writer
    lost since the last look, mailed to [rate].notify (once per crossing, not every look)."""

    def __init__(
        self,
        config: Callable[[], Config],
        writer: Writer,
        notifier: Notifier,
        hold: Callable[[], HoldScan],
    ) -> None:
        self.config = config
        self.writer = writer
        self.notifier = notifier
        self.hold = hold
        self.held_alerted = False
        self.lost_seen = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="postwarden-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.config().daemon.metrics.watch_seconds):
            try:
                self.look()
            except Exception as exc:  # noqa: BLE001  (a failed look never ends the watch)
                log.error("watch: %r", exc)

    def look(self) -> list[AdminNotice]:
        from postwarden.milter.notify import AdminNotice

        cfg = self.config()
        sent: list[AdminNotice] = []
        over = cfg.daemon.metrics.notify_held_over
        scan = self.hold() if over else HoldScan(ok=False)  # 0: never asks postqueue
        if over and scan.ok and scan.total > over and not self.held_alerted:
            self.held_alerted = True
            reasons = ", ".join(f"{n} {r}" for r, n in sorted(scan.by_reason.items()))
            sent.append(
                AdminNotice(
                    f"postwarden: {scan.total} messages held",
                    f"Postfix's hold queue holds {scan.total} messages, more than"
                    f" [metrics].notify_held_over = {over}.\nBy reason: {reasons}.\n\n"
                    "To see who sent them and why:\n"
                    "  postwarden quarantine list\n"
                    "  postwarden senders --locked\n"
                    "Release what is legitimate (postwarden quarantine release --sender ID),"
                    " delete what is spam (postwarden quarantine delete --sender ID).\n",
                )
            )
        elif scan.ok and scan.total <= over:
            self.held_alerted = False
        lost = self.writer.dropped + self.writer.failed
        if lost > self.lost_seen:
            sent.append(
                AdminNotice(
                    f"postwarden: {lost - self.lost_seen} decision rows lost",
                    f"postwarden's writer lost {lost - self.lost_seen} rows since it last looked"
                    f" ({self.writer.dropped} dropped on a full queue, {self.writer.failed}"
                    " refused by the database, since the daemon started).\n"
                    "Mail was decided and delivered as usual; only its record is missing.\n\n"
                    "Check the daemon's log (store: ...) and the database's disk:\n"
                    f"  {cfg.daemon.store.database}\n"
                    "  postwarden log --since 1h\n",
                )
            )
            self.lost_seen = lost
        for notice in sent:
            self.notifier.tell(notice)
        return sent
