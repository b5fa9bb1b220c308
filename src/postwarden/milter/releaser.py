"""The releaser: one thread inside the daemon that lets paced and warm-up holds leave.

The hold queue itself is the spool; SQLite keeps only the schedule (store/pacing.py): which
held queue ids wait, in what order, what each charges, and the releases already made. Each
round:

1. finishes any release a previous round (or a killed daemon) claimed but may not have told
   Postfix about: `postsuper -H` again, which releases a held message once however often it is
   told, and never makes a second copy;
2. chooses what may leave now (policy/streams.py `choose`: the pace's next slot, today's
   warm-up allowance, oldest first);
3. checks each chosen message is still in the hold queue: one an admin released or deleted is
   simply dropped from the schedule (never counted), one Postfix has not yet moved into the
   hold queue waits;
4. claims the rest in one transaction (state 'releasing', the pace's release and the warm-up
   counts written), then `postsuper -H` and `postqueue -i` (deliver now), then forgets them.

So the allowance is counted before any message leaves: across a kill -9 at any point no more
than the pace leaves in a window, and every message leaves exactly once.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from postwarden.config import Config
from postwarden.config.models import DaemonConfig
from postwarden.milter.clock import schedule_today
from postwarden.policy.streams import PaceState, Waiting, choose, pace_of, spacing
from postwarden.store import pacing

log = logging.getLogger("postwarden")

IDLE_S = 1.0  # between rounds with nothing paced waiting
ERROR_S = 5.0  # after a failed round
# A scheduled queue id Postfix does not show in any queue this long after it was held is gone
# (delivered after an admin's release, or deleted). Younger, it may still be on its way in:
# cleanup made its queue file before postwarden saw the message, but finishes it after.
GRACE_S = 5.0
WAIT_POSTFIX_S = 0.2  # before asking again for a message Postfix is still writing
SWEEP_S = 30.0  # how often rows an admin released or deleted are dropped from the schedule


# postsuper names each message it releases: "postsuper: 4B3C2D1E0F: released from hold".
_RELEASED = re.compile(r"^postsuper: ([0-9A-Za-z]+): released from hold$", re.M)
_RELEASED_TOTAL = re.compile(r"^postsuper: Released from hold: (\d+) messages?$", re.M)


# Test hook: POSTWARDEN_RELEASER_CRASH=after_claim (or after_release) makes the daemon kill
# itself with SIGKILL at that point of its first release, so a test can show that a restart
# finishes the release exactly once.
CRASH_ENV = "POSTWARDEN_RELEASER_CRASH"


def _crash_point(where: str) -> None:
    if os.environ.get(CRASH_ENV) == where:
        log.warning("releaser: %s=%s: killing the daemon now", CRASH_ENV, where)
        os.kill(os.getpid(), signal.SIGKILL)


class ReleaseError(RuntimeError):
    pass


def _run(cmd: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    # `postwarden releaser` runs as the service user with root kept only as its real and saved
    # user id (serve() below): each Postfix command it runs takes root back in the child alone.
    as_root = 0 if os.getuid() == 0 and os.geteuid() != 0 else None
    try:
        return subprocess.run(
            cmd,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            user=as_root,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ReleaseError(f"{cmd[0]}: {exc}") from None


def queue_names(config_dir: str) -> dict[str, str]:
    """queue id -> the Postfix queue it is in (hold, deferred, active, incoming, maildrop)."""
    res = _run(["postqueue", "-c", config_dir, "-j"])
    if res.returncode != 0:
        raise ReleaseError(f"postqueue -j: {res.stderr.strip() or res.returncode}")
    out = {}
    for line in res.stdout.splitlines():
        if line.strip():
            item = json.loads(line)
            out[str(item.get("queue_id", ""))] = str(item.get("queue_name", ""))
    return out


class Releaser:
    def __init__(self, database: str, config: Callable[[], Config]) -> None:
        self.database = database
        self.config = config
        self.conn = pacing.connect(database)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="releaser", daemon=True)
        self._last_sweep = 0.0
        self.released = 0  # messages released since start (for the log and tests)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _loop(self) -> None:
        log.info("releaser: started")
        while not self._stop.is_set():
            try:
                wait = self.round(time.time())
            except Exception as exc:  # noqa: BLE001  (a failed round is retried; mail stays held)
                log.error("releaser: round failed, retrying in %.0f s: %s", ERROR_S, exc)
                wait = ERROR_S
            self._stop.wait(wait)

    # ---- one round -------------------------------------------------------------------------

    def round(self, now: float) -> float:
        """Release what may leave now; return the seconds until the next round is worth it."""
        config = self.config()
        policy, config_dir = config.policy, config.daemon.postfix.config_directory
        rows = [Waiting(*r) for r in pacing.waiting(self.conn)]
        if not rows:
            return IDLE_S
        claimed = [w.queue_id for w in rows if w.state == "releasing"]
        if claimed:
            log.info("releaser: finishing %d claimed release(s)", len(claimed))
            self._tell_postfix(config_dir, claimed, queue_names(config_dir))
            return 0.0
        if now - self._last_sweep > SWEEP_S:
            self._last_sweep = now
            if self._sweep(config_dir, rows, now):
                return 0.0
        rate = pace_of(policy)
        in_window, last = pacing.pace_state(self.conn, rate[1] if rate else 1, now)
        today = schedule_today(datetime.fromtimestamp(now, UTC))
        sent = pacing.sent_on(self.conn, today.isoformat())
        chosen = choose(rows, policy, PaceState(in_window, last), sent, today, now)
        waiting_for_postfix = False
        if chosen:
            day = today.isoformat()
            claims = [(w.queue_id, w.pace, w.charges) for w in chosen]
            with pacing.transaction(self.conn):
                pacing.claim(self.conn, claims, now, day)
            _crash_point("after_claim")
            released = self._release(config_dir, [w.queue_id for w in chosen])
            _crash_point("after_release")
            missing = [w for w in chosen if w.queue_id not in released]
            if missing:
                # Not in the hold queue: not there yet (Postfix is still writing it), or an
                # admin released or deleted it. Neither used the allowance.
                queues = queue_names(config_dir)
                old = [w for w in missing if self._gone(w, queues.get(w.queue_id), now)]
                young = [w for w in missing if w not in old]
                with pacing.transaction(self.conn):
                    for group, drop in ((young, False), (old, True)):
                        pacing.unclaim(
                            self.conn,
                            [(w.queue_id, w.pace, w.charges) for w in group],
                            now,
                            day,
                            drop,
                        )
                if old:
                    log.info(
                        "releaser: %s no longer held (released or deleted by hand): off the"
                        " schedule",
                        ", ".join(w.queue_id for w in old),
                    )
                waiting_for_postfix = bool(young)
            if released:
                with pacing.transaction(self.conn):
                    pacing.forget(self.conn, released)
                if rate is not None and any(w.pace and w.queue_id in released for w in chosen):
                    last = now
            if missing and not released:
                return 0.0 if not waiting_for_postfix else WAIT_POSTFIX_S
        if rate is not None and any(w.pace for w in rows):
            next_slot = (last + spacing(*rate)) if last else now
            return min(IDLE_S, max(0.01, next_slot - time.time()))
        return IDLE_S

    def _gone(self, w: Waiting, queue: str | None, now: float) -> bool:
        if queue == "hold":
            return False
        if queue in ("deferred", "active", "corrupt"):
            return True  # released (or being delivered) by someone else
        if queue is not None:
            return False  # incoming or maildrop: on its way into the hold queue
        return now - w.held_at > GRACE_S  # not in any queue: delivered or deleted

    def _forget_gone(self, queue_ids: list[str]) -> None:
        with pacing.transaction(self.conn):
            pacing.forget(self.conn, queue_ids)
        log.info(
            "releaser: %s no longer held (released or deleted by hand): off the schedule",
            ", ".join(queue_ids),
        )

    def _sweep(self, config_dir: str, rows: list[Waiting], now: float) -> bool:
        queues = queue_names(config_dir)
        gone = [
            w.queue_id
            for w in rows
            if w.state == "held" and self._gone(w, queues.get(w.queue_id), now)
        ]
        if gone:
            self._forget_gone(gone)
        with pacing.transaction(self.conn):
            pacing.prune(
                self.conn, now, schedule_today(datetime.fromtimestamp(now, UTC)).isoformat()
            )
        return bool(gone)

    def _release(self, config_dir: str, queue_ids: list[str]) -> set[str]:
        """postsuper -H: the queue ids it released (it names each), then delivery now."""
        res = _run(["postsuper", "-c", config_dir, "-H", "-"], "\n".join(queue_ids) + "\n")
        if res.returncode != 0:
            raise ReleaseError(f"postsuper -H: {res.stderr.strip() or res.returncode}")
        wanted = set(queue_ids)
        released = {m.group(1) for m in _RELEASED.finditer(res.stderr) if m.group(1) in wanted}
        total = _RELEASED_TOTAL.search(res.stderr)
        if total is None or int(total.group(1)) != len(released):
            # Output not as expected (another Postfix?): take every one as released, so that
            # none leaves uncounted; one that was not held stays held, in `quarantine list`.
            log.warning("releaser: cannot read postsuper's output %r", res.stderr.strip()[:300])
            released = wanted
        for q in sorted(released, key=queue_ids.index):
            # Released mail waits in the deferred queue for the next queue run: send it now.
            _run(["postqueue", "-c", config_dir, "-i", q])
            log.info("%s: released by the releaser", q)
        self.released += len(released)
        return released

    def _tell_postfix(self, config_dir: str, queue_ids: list[str], queues: dict[str, str]) -> None:
        """Finish claims a previous round left: release those still held; the others left
        already (their release counted once)."""
        held = [q for q in queue_ids if queues.get(q) == "hold"]
        if held:
            self._release(config_dir, held)
        with pacing.transaction(self.conn):
            pacing.forget(self.conn, queue_ids)


# ---- where it runs: a thread of the daemon, or `postwarden releaser` ---------------------------


def in_daemon(daemon: DaemonConfig) -> bool:
    """[milter].releaser: "thread" (the daemon starts the releaser) or "service" (it does not:
    `postwarden releaser`, the .deb's postwarden-releaser.service, does)."""
    return daemon.milter.releaser == "thread"
