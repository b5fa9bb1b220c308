"""The quarantine is Postfix's hold queue: list, show, release (postsuper -H), delete (-d).

Built for a compromised account's 100,000 held messages: one postqueue call lists them, list
is paged, and a bulk release or delete is one postsuper process per batch of queue ids fed on
its standard input, never one per message.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

import sqlite_utils

from postwarden import audit
from postwarden.store import records

BATCH = 10_000  # queue ids per postsuper process


class PostfixError(RuntimeError):
    """Postfix could not be asked (exit 75)."""


@dataclass
class Held:
    queue_id: str
    arrival_time: int
    sender: str
    recipients: list[str]
    size: int
    identity: str = ""
    header_from: str = ""
    subject: str = ""
    reasons: list[str] = field(default_factory=list)
    # streams.md: a paced or warm-up hold's schedule ("pace", "warmup", "pace+warmup") and
    # when it is due to leave (ISO, UTC); "" for any other hold.
    paced: str = ""
    due: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _run(cmd: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        res = subprocess.run(
            cmd, input=stdin, capture_output=True, text=True, timeout=600, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PostfixError(f"{cmd[0]}: {exc}") from None
    return res


def held(config_dir: str) -> list[Held]:
    """Every message in the hold queue, oldest first."""
    res = _run(["postqueue", "-c", config_dir, "-j"])
    if res.returncode != 0:
        raise PostfixError(f"postqueue -c {config_dir} -j: {res.stderr.strip() or res.returncode}")
    out = []
    for line in res.stdout.splitlines():
        if not line.strip():
            continue
        item = json.loads(line)
        if item.get("queue_name") != "hold":
            continue
        out.append(
            Held(
                queue_id=item["queue_id"],
                arrival_time=int(item.get("arrival_time", 0)),
                sender=item.get("sender", ""),
                recipients=[r.get("address", "") for r in item.get("recipients", [])],
                size=int(item.get("message_size", 0)),
            )
        )
    out.sort(key=lambda h: (h.arrival_time, h.queue_id))
    return out


def with_decisions(db: sqlite_utils.Database, messages: list[Held]) -> list[Held]:
    """Fill in identity, From, Subject and reasons from each message's decision row."""
    by_id = {m.queue_id: m for m in messages}
    rows = records.decisions_by_queue_id(db, list(by_id))
    for queue_id, _, _, identity, header_from, subject, reasons in rows:
        m = by_id[queue_id]
        m.identity, m.header_from, m.subject = identity or "", header_from or "", subject or ""
        m.reasons = [f"{r['check']}.{r['code']}" for r in json.loads(reasons or "[]")]
    return messages


def page(items: list[Held], number: int, size: int) -> list[Held]:
    start = (max(number, 1) - 1) * size
    return items[start : start + size]


def by_sender(messages: list[Held], sender: str) -> list[Held]:
    """A sender is an identity (sasl:alice@example.com) or an envelope sender."""
    return [m for m in messages if sender in (m.identity, m.sender)]


@dataclass
class Outcome:
    done: list[str]
    missing: list[str]
    processes: int
    seconds: float


def _postsuper(config_dir: str, flag: str, queue_ids: list[str], batch: int) -> tuple[int, str]:
    calls = 0
    errors = []
    for i in range(0, len(queue_ids), batch):
        chunk = queue_ids[i : i + batch]
        res = _run(["postsuper", "-c", config_dir, flag, "-"], stdin="\n".join(chunk) + "\n")
        calls += 1
        if res.returncode != 0:
            errors.append(res.stderr.strip())
    return calls, "; ".join(errors)


def act(
    db: sqlite_utils.Database,
    config_dir: str,
    action: str,
    queue_ids: list[str],
    *,
    sender: str = "",
    note: str = "",
    batch: int = BATCH,
) -> Outcome:
    """Release (postsuper -H) or delete (postsuper -d) held messages, audited: those named,
    and with `sender` every held message of that identity or envelope sender."""
    flag = {"release": "-H", "delete": "-d"}[action]
    started = time.monotonic()
    in_queue = held(config_dir)  # one listing, however many are held
    in_hold = {m.queue_id for m in in_queue}
    wanted = list(queue_ids)
    if sender:
        wanted += [m.queue_id for m in by_sender(with_decisions(db, in_queue), sender)]
    wanted = list(dict.fromkeys(wanted))
    todo = [q for q in wanted if q in in_hold]
    missing = [q for q in wanted if q not in in_hold]
    calls, error = _postsuper(config_dir, flag, todo, batch) if todo else (0, "")
    if error:
        raise PostfixError(f"postsuper {flag}: {error}")
    if action == "release" and todo:
        # postsuper -H moves mail to the deferred queue, sent at the next queue run (minutes
        # away): one flush sends it now.
        _run(["postqueue", "-c", config_dir, "-f"])
    audit.record(db, f"quarantine.{action}", todo, note)
    return Outcome(todo, missing, calls, time.monotonic() - started)


# Postfix queue ids: short ones are upper-case hex (the inode and microseconds); long ones
# (enable_long_queue_ids) are base-52 digits without vowels, a "z", then more of them.
_SHORT_ID = re.compile(r"[0-9A-F]{6,20}")
_LONG_ID = re.compile(
    r"[0-9BCDFGHJKLMNPQRSTVWXYbcdfghjklmnpqrstvwxy]{6,20}z[0-9BCDFGHJKLMNPQRSTVWXYbcdfghjklmnpqrstvwxy]{1,20}"
)


class BadQueueId(ValueError):
    """Not a Postfix queue id (exit 2), or not one in the hold queue (exit 1)."""

    def __init__(self, message: str, *, held: bool = False) -> None:
        super().__init__(message)
        self.usage = not held


def valid_queue_id(text: str) -> bool:
    """Whether `text` is a Postfix queue id, short or long form (and so never an option)."""
    return bool(_SHORT_ID.fullmatch(text) or _LONG_ID.fullmatch(text))


def show(config_dir: str, queue_id: str) -> str:
    """A held message as postcat prints it (its envelope and headers). Only a queue id in the
    hold queue is shown: anything else is BadQueueId, never passed to postcat."""
    if not valid_queue_id(queue_id):
        raise BadQueueId(f"{queue_id!r} is not a Postfix queue id (such as 4B3C2D1E0F)")
    if queue_id not in {m.queue_id for m in held(config_dir)}:
        raise BadQueueId(f"{queue_id} is not in the hold queue", held=True)
    try:
        res = subprocess.run(
            ["postcat", "-c", config_dir, "-bh", "-q", "--", queue_id],
            capture_output=True,
            timeout=600,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PostfixError(f"postcat: {exc}") from None
    # A message's bytes are whatever the sender wrote: keep invalid UTF-8 as escapes.
    stderr = res.stderr.decode("utf-8", "replace").strip()
    if res.returncode != 0:
        raise PostfixError(f"postcat -q {queue_id}: {stderr or 'not found'}")
    return res.stdout.decode("utf-8", "surrogateescape")
