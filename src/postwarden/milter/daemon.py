"""`postwarden milter`: the daemon.

Transport. [milter].transport = "python" (the default) serves the milter protocol on one asyncio
thread (milter/transport.py says why); "libmilter" runs pymilter's C library, as below.

Signals. Left to itself, libmilter's signal thread takes SIGHUP and SIGTERM as "stop" and SIGINT
as "abort", and a Python handler would never run while the main thread sits in libmilter's C
loop. Worse, pymilter forgets its interpreter the moment smfi_main() returns, so no callback can
run after libmilter stops: a message in hand would be cut off. So libmilter runs in a thread of
its own (which blocks those signals), and the main thread keeps them unblocked with Python
handlers. Linux gives a process-directed signal to the thread-group leader whenever that thread
accepts it, so the main thread takes every signal. SIGUSR1 reloads, as with OpenDKIM. SIGTERM,
SIGHUP and SIGINT wait for the messages in hand ([milter].timeout at most), then stop libmilter.
"""

from __future__ import annotations

import atexit
import contextlib
import grp
import logging
import logging.handlers
import os
import queue
import signal
import socket
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import Milter

from postwarden import EX_CONFIG, EX_TEMPFAIL, suffixes
from postwarden.config import Config, ConfigError, load_config
from postwarden.config.loader import daemon_changes
from postwarden.feedback.ingest import NoticeFlusher
from postwarden.metrics import Collector, Endpoint, Watch, serve
from postwarden.milter import adapter, transport
from postwarden.milter.notify import Notifier
from postwarden.milter.releaser import Releaser, in_daemon
from postwarden.milter.runtime import Runtime
from postwarden.store import daemon_state
from postwarden.store.db import open_db
from postwarden.store.feedback import SuppressionLookup
from postwarden.store.rates import RateStore
from postwarden.store.shared import (
    RedisRateStore,
    RedisUsedTokens,
    SharedConfigError,
    SharedUnavailable,
    open_shared,
)
from postwarden.store.writer import Writer

log = logging.getLogger("postwarden")

# Only the actions used: added and removed headers (hygiene, DKIM-Signature), a replaced body
# (bare HTML wrapped), the hold queue, a suppressed recipient removed.
ACTIONS: int = Milter.QUARANTINE | Milter.ADDHDRS | Milter.CHGHDRS | Milter.CHGBODY | Milter.DELRCPT
HANDLED_SIGNALS = {signal.SIGUSR1, signal.SIGTERM, signal.SIGHUP, signal.SIGINT}


_LISTENER: logging.handlers.QueueListener | None = None


def setup_logging(to: str, level: str) -> None:
    """One thread writes the log: every other thread puts its record on a queue. Written from
    each libmilter thread, a line held the handler's lock across its write, and so across the
    wait to get the GIL back after it, while every other message's line waited (issue 21);
    a slow journald or syslog would have stalled end-of-message too. The queue is unbounded:
    a line is never dropped, and the listener is flushed at exit."""
    _stop_logging()
    global _LISTENER
    root = logging.getLogger("postwarden")
    root.handlers.clear()
    root.setLevel(level.upper())
    root.propagate = False
    handler: logging.Handler
    if to == "syslog" and Path("/dev/log").exists():
        handler = logging.handlers.SysLogHandler(
            address="/dev/log", facility=logging.handlers.SysLogHandler.LOG_MAIL
        )
        handler.setFormatter(logging.Formatter(f"postwarden[{os.getpid()}]: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"postwarden[{os.getpid()}]: %(message)s"))
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    _LISTENER = logging.handlers.QueueListener(records, handler)
    # Its thread takes none of the daemon's signals (the main thread takes them all).
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
    try:
        _LISTENER.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    root.addHandler(logging.handlers.QueueHandler(records))
    if to == "syslog" and not isinstance(handler, logging.handlers.SysLogHandler):
        log.warning("[log].to = syslog but /dev/log does not exist: logging to stderr")


def _stop_logging() -> None:
    """Every line queued is written before the process ends."""
    global _LISTENER
    if _LISTENER is not None:
        _LISTENER.stop()
        _LISTENER = None


atexit.register(_stop_logging)


def _socket_path(spec: str) -> Path | None:
    return Path(spec[5:]) if spec.startswith("unix:") else None


def _prepare_socket_dir(spec: str) -> None:
    path = _socket_path(spec)
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)


def _open_socket_to_postfix(spec: str) -> None:
    """Only Postfix may reach the socket: group postfix, mode 0660."""
    path = _socket_path(spec)
    if path is None or not path.exists():
        return
    try:
        gid = grp.getgrnam("postfix").gr_gid
    except KeyError:
        gid = -1
    with contextlib.suppress(PermissionError):
        os.chown(path, -1, gid)
    os.chmod(path, 0o660)


class Daemon:
    def __init__(self, config: Config) -> None:
        # Before any thread starts: every thread inherits the mask and never takes these
        # signals; run() unblocks them in the main thread alone, once its handlers are set.
        signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
        self.config = config
        # Parsed now (about 60 ms of CPU), not by the first message's alignment check.
        suffixes.public_suffixes()
        # The one RateStore of the process: the writer takes its write lock, so a batch and a
        # rate transaction (or a group of them: rates.py) hand over without SQLite's busy
        # handler. (A second RateStore for the milter left the writer's lock unshared.)
        rates = RateStore(config.daemon.store.database)
        self.writer = Writer(
            config.daemon.store.database, config.daemon.store.retention_days, rates.write_lock
        )
        self.writer.start()  # migrates: the tables and the notice key exist from here on
        secret = daemon_state.notice_secret(open_db(config.daemon.store.database))
        # [store].shared (issue 19): counts, locks and used notice tokens in Redis.
        shared = open_shared(config.daemon.store)
        used_tokens = RedisUsedTokens(shared.client) if shared is not None else None
        if shared is not None:
            secret = _shared_secret(shared, secret)
        self.runtime = Runtime(
            config=config,
            writer=self.writer,
            rates=shared if shared is not None else rates,
            notifier=Notifier(
                config.daemon.postfix.config_directory,
                config.policy.rate.notify,
                config.daemon.server.hostname or socket.getfqdn(),
                secret,
            ),
            notice_secret=secret,
            # [store].shared: the suppression list every server shares, in Redis.
            suppressions=shared.suppressions
            if shared is not None
            else SuppressionLookup(config.daemon.store.database),
            used_tokens=used_tokens,
        )
        # Complaint notices gathered over [feedback].notice_interval (feedback.md).
        self.flusher = NoticeFlusher(lambda: self.config)
        self.reload_seq = 0
        self.started_at = datetime.now(UTC).isoformat()
        self.endpoint: Endpoint | None = None
        self.watch: Watch | None = None
        # streams.md: releases paced and warm-up holds, under the policy in force.
        self.releaser = Releaser(config.daemon.store.database, lambda: self.runtime.config)

    # ---- reload --------------------------------------------------------------------------------

    def reload(self) -> bool:
        """Re-read the policy files and their keys (RELOADED). postwarden.toml's settings are
        read at start only: a reload that finds them changed says which, applies none of them,
        and reloads the policy from the folder in force."""
        self.reload_seq += 1
        try:
            fresh = load_config(self.config.path)
            restart_only = daemon_changes(self.config.daemon, fresh.daemon)
            new = (
                load_config(self.config.path, daemon=self.config.daemon) if restart_only else fresh
            )
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload refused: %s", problem)
            log.error(
                "reload refused: %d problem(s); still serving policy %s",
                len(exc.problems),
                self.runtime.policy.hash,
            )
            self._record_status(False, "\n".join(str(p) for p in exc.problems))
            self.runtime.metrics.reloaded(False)
            return False
        for w in new.warnings:
            log.warning("%s", w)
        # Swap the policy and keys whole: a message in flight keeps its own snapshot.
        self.config = new
        self.runtime.config = new
        self.runtime.notifier.recipients = new.policy.rate.notify
        message = f"policy {new.policy.hash} in force"
        if restart_only:
            message += (
                "; not applied until the daemon is restarted (postwarden.toml): "
                + ", ".join(restart_only)
            )
            log.warning("reload: %s", message)
        else:
            log.info("reload: %s", message)
        self._record_status(True, message)
        self.runtime.metrics.hosted(new.policy.domains)
        self.runtime.metrics.reloaded(True)
        return True

    # ---- metrics (issue 20): the endpoint and the watch, each in threads of their own ----------

    def _start_metrics(self) -> None:
        rt = self.runtime
        collector = Collector(
            lambda: rt.config, rt.writer, rt.notifier, rt.metrics, lambda: rt.in_flight
        )
        rt.metrics.registry.register(collector)
        self.watch = Watch(lambda: rt.config, rt.writer, rt.notifier, collector.hold)
        self.watch.start()
        listen = self.config.daemon.metrics.listen
        if not listen:
            return
        try:
            self.endpoint = serve(listen, rt.metrics.registry)
        except OSError as exc:
            # Mail matters more than its metrics: the daemon serves on, and says so.
            log.error("metrics: cannot listen on %s: %s; serving mail without it", listen, exc)
            return
        log.info("metrics on %s", listen)

    def _stop_metrics(self) -> None:
        if self.watch is not None:
            self.watch.stop()
        if self.endpoint is not None:
            self.endpoint.close()

    def _record_status(self, ok: bool, message: str) -> None:
        self.writer.submit(
            daemon_state.status_op(
                os.getpid(),
                self.started_at,
                datetime.now(UTC).isoformat(),
                self.runtime.policy.hash,
                self.reload_seq,
                ok,
                message,
            ),
            "the daemon's status",
        )

    def _on_signal(self, signum: int, frame: object) -> None:
        # Only set flags: the main loop acts on them, outside the handler.
        if signum == signal.SIGUSR1:
            self._reload_requested = True
        else:
            self._stop_requested = signum

    # ---- run -----------------------------------------------------------------------------------

    def run(self) -> int:
        cfg = self.config.daemon
        handled = HANDLED_SIGNALS
        self._reload_requested = False
        self._stop_requested = 0
        self._record_status(True, f"started with policy {self.runtime.policy.hash}")
        pidfile = Path(cfg.milter.pidfile)
        pidfile.parent.mkdir(parents=True, exist_ok=True)
        pidfile.write_text(f"{os.getpid()}\n")

        Milter.factory = adapter.factory(self.runtime)
        Milter.set_flags(ACTIONS)  # libmilter's; the python transport is given ACTIONS
        _prepare_socket_dir(cfg.milter.socket)
        log.info(
            "starting on %s (%s transport) with policy %s, database %s, counts and locks in %s",
            cfg.milter.socket,
            cfg.milter.transport,
            self.runtime.policy.hash,
            cfg.store.database,
            cfg.store.shared or "the database",
        )
        failure: list[BaseException] = []
        server: transport.Server | None = None
        if cfg.milter.transport == "python":
            server = transport.Server(Milter.factory, ACTIONS)
            try:
                _open_python(server, cfg.milter.socket)
            except OSError as exc:
                log.error("could not open %s: %s", cfg.milter.socket, exc)
                self._shutdown(pidfile)
                return EX_TEMPFAIL
            serving = threading.Thread(
                target=_serve_python, args=(server, failure), name="milter", daemon=True
            )
        else:
            try:
                _open_libmilter(cfg.milter.socket, cfg.milter.timeout)
            except Milter.error as exc:
                log.error("libmilter could not open %s: %s", cfg.milter.socket, exc)
                self._shutdown(pidfile)
                return EX_TEMPFAIL
            serving = threading.Thread(
                target=_serve_libmilter, args=(failure,), name="libmilter", daemon=True
            )
        serving.start()
        self._start_metrics()
        if in_daemon(cfg):  # else `postwarden releaser` does it ([milter].releaser)
            self.releaser.start()
        else:
            log.info('releaser: not started here: [milter].releaser = "service"')
        self.flusher.start()
        for sig in handled:
            signal.signal(sig, self._on_signal)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, handled)

        while not self._stop_requested and serving.is_alive():
            if self._reload_requested:
                self._reload_requested = False
                log.info("SIGUSR1: reloading policy")
                self.reload()
            time.sleep(0.05)
        if self._stop_requested:
            log.info(
                "%s: finishing %d message(s) in hand, then stopping",
                signal.Signals(self._stop_requested).name,
                self.runtime.in_flight,
            )
            self._drain(cfg.milter.timeout)
        if self._stop_requested and server is not None:
            server.stop()
            serving.join(cfg.milter.timeout)
        elif self._stop_requested:
            # libmilter's accept loop looks at the stop flag only between waits of several
            # seconds (Milter.stop() blocks until then: a stop took 4-6 s): connections of our
            # own, once the flag is set, wake it at once.
            waker = threading.Thread(
                target=_wake_until_gone, args=(cfg.milter.socket, serving), daemon=True
            )
            waker.start()
            Milter.stop()
            serving.join(cfg.milter.timeout)
        self._shutdown(pidfile)
        if failure:
            log.error("%s stopped with an error: %s", cfg.milter.transport, failure[0])
            return EX_TEMPFAIL
        log.info("stopped")
        return 0

    def _shutdown(self, pidfile: Path) -> None:
        self._stop_metrics()
        self.releaser.stop()
        self.flusher.stopping.set()
        self.writer.flush_and_stop()
        with contextlib.suppress(FileNotFoundError):
            if pidfile.read_text().strip() == str(os.getpid()):
                pidfile.unlink()

    def _drain(self, timeout: float) -> None:
        """Wait for the messages in hand. libmilter still accepts while we wait; a message it
        starts after the last one ends is cut off by the stop, and Postfix tempfails it."""
        deadline = time.monotonic() + timeout
        while self.runtime.in_flight > 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        if self.runtime.in_flight > 0:
            log.warning(
                "stopping with %d message(s) unfinished: Postfix tempfails them",
                self.runtime.in_flight,
            )


def _shared_secret(shared: RedisRateStore, local: str) -> str:
    """Every server binds its notices with the key the first one put in Redis; if Redis is
    down at start, the local key (a notice then passes only the server that sent it)."""
    try:
        return shared.notice_secret(local)
    except SharedUnavailable as exc:
        log.warning("[store].shared unreachable at start (%s): the local notice key is used", exc)
        return local


def _temporary(spec: str) -> str:
    """Where the socket is bound first. A unix socket is made under a temporary name and renamed
    into place (_into_place) once its group and mode let Postfix in: the name Postfix connects
    to appears only when it can be used (the race between the socket's creation and its chown
    tempfailed the first messages). An inet socket is bound where it stays."""
    final = _socket_path(spec)
    return spec if final is None else f"unix:{final.parent / f'.{final.name}.{os.getpid()}'}"


def _into_place(bound: str, spec: str) -> None:
    _open_socket_to_postfix(bound)
    final = _socket_path(spec)
    if final is not None:
        os.replace(bound[5:], final)


def _open_python(server: transport.Server, spec: str) -> None:
    bound = _temporary(spec)
    server.bind(bound)
    _into_place(bound, spec)


def _serve_python(server: transport.Server, failure: list[BaseException]) -> None:
    try:
        server.serve()
    except Exception as exc:  # noqa: BLE001  (reported by run(): the daemon stops, EX_TEMPFAIL)
        failure.append(exc)


def _open_libmilter(socket: str, timeout: int) -> None:
    """Milter.runmilter's set-up, with the socket's owner and mode set before serving."""
    import milter as libmilter  # pymilter's C module

    libmilter.set_connect_callback(Milter.connect_callback)
    libmilter.set_helo_callback(lambda ctx, host: ctx.getpriv().hello(host))
    libmilter.set_envfrom_callback(lambda ctx, *b: ctx.getpriv().envfrom_bytes(*b))
    libmilter.set_envrcpt_callback(lambda ctx, *b: ctx.getpriv().envrcpt_bytes(*b))
    libmilter.set_header_callback(lambda ctx, f, v: ctx.getpriv().header_bytes(f, v))
    libmilter.set_eoh_callback(lambda ctx: ctx.getpriv().eoh())
    libmilter.set_body_callback(lambda ctx, chunk: ctx.getpriv().body(chunk))
    libmilter.set_eom_callback(lambda ctx: ctx.getpriv().eom())
    libmilter.set_abort_callback(lambda ctx: ctx.getpriv().abort())
    libmilter.set_close_callback(Milter.close_callback)
    bound = _temporary(socket)
    libmilter.setconn(bound)
    libmilter.settimeout(timeout)
    libmilter.register(
        "postwarden",
        data=lambda ctx: ctx.getpriv().data(),
        unknown=lambda ctx, cmd: ctx.getpriv().unknown(cmd),
        negotiate=Milter.negotiate_callback,
    )
    old_umask = os.umask(0o117)
    try:
        libmilter.opensocket(True)
    finally:
        os.umask(old_umask)
    _into_place(bound, socket)


def _wake(spec: str) -> None:
    try:
        if spec.startswith("unix:"):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(1)
                s.connect(spec[5:])
        else:
            port, _, host = spec.partition(":")[2].partition("@")
            with socket.create_connection((host, int(port)), timeout=1):
                pass
    except (OSError, ValueError) as exc:
        log.debug("stop: waking libmilter's accept loop: %s", exc)


def _wake_until_gone(spec: str, serving: threading.Thread) -> None:
    for _ in range(50):
        time.sleep(0.1)
        if not serving.is_alive():
            return
        _wake(spec)


def _serve_libmilter(failure: list[BaseException]) -> None:
    try:
        Milter.main()
    except Milter.error as exc:
        failure.append(exc)


def run(config_file: Path) -> int:
    try:
        config = load_config(config_file)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"postwarden: refusing to start: {len(exc.problems)} problem(s)", file=sys.stderr)
        return EX_CONFIG
    setup_logging(config.daemon.log.to, config.daemon.log.level)
    for w in config.warnings:
        log.warning("%s", w)
    try:
        daemon = Daemon(config)
    except SharedConfigError as exc:
        print(f"postwarden: refusing to start: {exc}", file=sys.stderr)
        return EX_CONFIG
    return daemon.run()
