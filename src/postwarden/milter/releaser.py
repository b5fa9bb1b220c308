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
import subprocess
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from postwarden.config import Config
from postwarden.milter.clock import schedule_today
from postwarden.policy.streams import PaceState, Waiting, choose, pace_of, spacing
from postwarden.store import pacing

log = logging.getLogger("postwarden")

IDLE_S = 1.0  # between rounds with nothing paced waiting
ERROR_S = 5.0  # after a failed round
# A scheduled queue id Postfix does not show in any queue this long after it was held is gone
# (delivered after an admin's release, or deleted). Younger, it may still be on its way in.
GRACE_S = 120.0
SWEEP_S = 30.0  # how often rows an admin released or deleted are dropped from the schedule


class ReleaseError(RuntimeError):
    pass


def _run(cmd: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            cmd, input=stdin, capture_output=True, text=True, timeout=120, check=False
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
        if chosen:
            queues = queue_names(config_dir)
            gone = [w.queue_id for w in chosen if self._gone(w, queues.get(w.queue_id), now)]
            if gone:
                self._forget_gone(gone)
                return 0.0
            ready = [w for w in chosen if queues.get(w.queue_id) == "hold"]
            if ready:
                with pacing.transaction(self.conn):
                    pacing.claim(
                        self.conn,
                        [(w.queue_id, w.pace, w.charges) for w in ready],
                        now,
                        today.isoformat(),
                    )
                self._tell_postfix(config_dir, [w.queue_id for w in ready], queues)
                if rate is not None and any(w.pace for w in ready):
                    last = now
        if rate is not None and any(w.pace for w in rows):
            next_slot = (last + spacing(*rate)) if last else now
            return min(IDLE_S, max(0.01, next_slot - time.time()))
        return IDLE_S

    def _gone(self, w: Waiting, queue: str | None, now: float) -> bool:
        if queue == "hold":
            return False
        if queue in ("deferred", "active", "corrupt"):
            return True  # released (or being delivered) by someone else
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

    def _tell_postfix(self, config_dir: str, queue_ids: list[str], queues: dict[str, str]) -> None:
        held = [q for q in queue_ids if queues.get(q) == "hold"]
        if held:
            res = _run(["postsuper", "-c", config_dir, "-H", "-"], "\n".join(held) + "\n")
            if res.returncode != 0:
                raise ReleaseError(f"postsuper -H: {res.stderr.strip() or res.returncode}")
            for q in held:
                # Released mail waits in the deferred queue for the next queue run: send it now.
                _run(["postqueue", "-c", config_dir, "-i", q])
        with pacing.transaction(self.conn):
            pacing.forget(self.conn, queue_ids)
        self.released += len(held)
        for q in held:
            log.info("%s: released by the releaser (paced)", q)
