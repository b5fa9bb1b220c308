"""The shared store ([store].shared): rate counts, locks, used notice tokens and shared sets in
Redis, for several postwarden servers that must meet one set of caps together.

Exactness. The engine reads a sender's counts, decides, and the plan's Count and LockSender are
written in the same transaction (milter/effects.py): Postfix is told the outcome before the
commit, so a transaction cannot be retried after a conflict (WATCH/MULTI would tell Postfix
twice). So the transaction here is pessimistic, as SQLite's BEGIN IMMEDIATE is: one Lua script
takes the sender's mutex (a key holding this transaction's random token, with a lease) and
reads its lock and window counts in the same atomic step; the commit is a second Lua script
that writes the events and the lock only if the mutex still holds this token, and frees it.
So between the read and the write no server can count a message for that sender, and if the
lease ran out (a stalled server) the commit writes nothing and fails: the message gets
[milter].on_error, never a pass over the cap. N servers together let exactly the cap through.

Keys, under the prefix "postwarden:":
  rate:{<identity>}:ev     sorted set: one member "<uuid>:<rcpts>:<queue id>" per counted
                           message, scored by its time (epoch seconds)
  rate:{<identity>}:lock   hash: locked_at, cap, queue_id
  rate:{<identity>}:mutex  the transaction's token (PX lease)
  rate:{<identity>}:mutex:done:<token>   a committed transaction, for a minute: a commit
                           retried after its reply was lost writes nothing twice
  rate:ids                 sorted set: identity -> time of its latest event
  rate:locks               set of the locked identities
  notice:<sha256 of the Message-ID>   a used notice token (EX NOTICE_TTL_S)
  notice-secret            the notice key every server shares
  set:<name>               hash: a shared set (member -> value)
  suppressed               hash: the suppression list, one field per recipient address
                           (lower-cased) whose value is a JSON object: domain scope ("" =
                           every domain) -> {created_at, source, reason, note, report,
                           feedback_type, reporter, message_id, server}. The look-up at RCPT is
                           one HGET, end-of-message one HMGET for all recipients.

When Redis cannot be reached every call raises `SharedUnavailable` (a redis.RedisError): the
milter's transaction fails before a verdict and the message gets [milter].on_error. The client
keeps a pool and reconnects by itself on the next call; socket timeouts are short (1 s).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from postwarden.policy.model import Lock, RateState, Suppression
from postwarden.store import feedback, records
from postwarden.store.db import open_db
from postwarden.store.rates import RateStore

log = logging.getLogger("postwarden")

PREFIX = "postwarden:"
KEEP_EVENTS_S = 2 * 86400  # as store/rates.py: the longest window is a day; keep a margin
SOCKET_TIMEOUT_S = 1.0
LEASE_MS = 5_000  # a sender's mutex outlives a stalled server by this much at most
WAIT_S = 10.0  # how long a transaction waits for a sender's mutex (as SQLite's busy timeout)
STRIPES = 64  # per-process locks, a sender's transactions queue on one of them
NOTICE_TTL_S = 600  # milter/notify.py's NOTICE_TTL_S: a used token is kept as long

SharedUnavailable = redis.RedisError


class SharedConfigError(ValueError):
    """[store].shared or its password file cannot be used (the message says which)."""


class AlreadyMoved(Exception):
    """`postwarden db move-to-shared` ran for this database before."""


class SharedBusy(redis.RedisError):
    """The sender's mutex was not free within WAIT_S, or its lease ran out before the commit."""


class RateTx(Protocol):
    """What milter/effects.py writes in a sender's transaction."""

    state: RateState

    def count(self, rcpts: int, queue_id: str) -> None: ...
    def lock(self, cap: str, queue_id: str) -> None: ...


class RateBackend(Protocol):
    """The rate store the milter uses: store.rates.RateStore (SQLite) or RedisRateStore."""

    def transaction(
        self, identity: str, windows: list[int], now: datetime
    ) -> AbstractContextManager[RateTx]: ...

    def state(self, identity: str, windows: list[int], now: datetime) -> RateState: ...


def _ts(x: float) -> str:
    # Lua turns numbers into strings with 14 digits: epoch times with microseconds need 16.
    return f"{x:.6f}"


# An event's member: "<running recipients total, 20 digits>:<rcpts>:<uuid>:<queue id>". As in
# store/rates.py, a window's counts come from the running total, not from summing its events:
# ZCOUNT for the messages, the latest total less the total before the window's first event for
# the recipients, O(log n) however many messages (held ones too) the sender has sent.
# (Zero-padded, so members with one score sort by their total.)
#
# KEYS: mutex, ev, lock. ARGV: token (or "" to read without the mutex), lease ms, now, windows...
# Returns {1, at, total, locked_at, cap, queue_id, msgs1, rcpts1, ...}, or {0} when taken.
_READ = """
if ARGV[1] ~= '' then
  local cur = redis.call('GET', KEYS[1])
  if cur and cur ~= ARGV[1] then return {0} end
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
local at = tonumber(ARGV[3])
local total = 0
local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
if last[1] then
  total = tonumber(string.match(last[1], '^(%d+):')) or 0
  if ARGV[1] ~= '' and tonumber(last[2]) > at then at = tonumber(last[2]) end
end
local l = redis.call('HMGET', KEYS[3], 'locked_at', 'cap', 'queue_id')
local out = {1, string.format('%.6f', at), tostring(total), l[1] or '', l[2] or '', l[3] or ''}
for i = 4, #ARGV do
  local lo = '(' .. string.format('%.6f', at - tonumber(ARGV[i]))
  local n = redis.call('ZCOUNT', KEYS[2], lo, '+inf')
  local r = 0
  if n > 0 then
    local first = redis.call('ZRANGEBYSCORE', KEYS[2], lo, '+inf', 'LIMIT', 0, 1)[1]
    local c, k = string.match(first, '^(%d+):(%d+):')
    r = total - ((tonumber(c) or 0) - (tonumber(k) or 0))
  end
  table.insert(out, n)
  table.insert(out, r)
end
return out
"""

# KEYS: mutex, ev, lock, ids, locks, done. ARGV: token, at, keep s, identity, n, member x n,
# then "1", locked_at, cap, queue_id to lock (or nothing). Returns 1, or 0 if the mutex is lost.
# "done" marks the commit for a minute: a commit retried because its reply was lost (the
# client retries once on a dropped connection) answers 1 again and writes nothing twice.
_COMMIT = """
if redis.call('EXISTS', KEYS[6]) == 1 then return 1 end
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[6], '1', 'EX', 60)
local at = tonumber(ARGV[2])
local keep = tonumber(ARGV[3])
local n = tonumber(ARGV[5])
for k = 1, n do redis.call('ZADD', KEYS[2], ARGV[2], ARGV[5 + k]) end
if n > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. string.format('%.6f', at - keep))
  redis.call('EXPIRE', KEYS[2], keep)
  redis.call('ZADD', KEYS[4], ARGV[2], ARGV[4])
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', '(' .. string.format('%.6f', at - keep))
end
local i = 6 + n
if ARGV[i] == '1' and redis.call('EXISTS', KEYS[3]) == 0 then
  redis.call('HSET', KEYS[3], 'locked_at', ARGV[i + 1], 'cap', ARGV[i + 2], 'queue_id', ARGV[i + 3])
  redis.call('SADD', KEYS[5], ARGV[4])
end
redis.call('DEL', KEYS[1])
return 1
"""

# KEYS: mutex. ARGV: token. Frees the mutex if it is still ours.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: lock, ev, locks, ids. ARGV: identity. Lifts the lock and starts the windows afresh.
_UNLOCK = """
if redis.call('DEL', KEYS[1]) == 1 then
  redis.call('DEL', KEYS[2])
  redis.call('SREM', KEYS[3], ARGV[1])
  redis.call('ZREM', KEYS[4], ARGV[1])
  return 1
end
return 0
"""


def _keys(identity: str) -> tuple[str, str, str]:
    base = f"{PREFIX}rate:{{{identity}}}"
    return f"{base}:mutex", f"{base}:ev", f"{base}:lock"


IDS = f"{PREFIX}rate:ids"
LOCKS = f"{PREFIX}rate:locks"


def read_password(path: str) -> str | None:
    """The password from shared_password_file (first line, whitespace stripped)."""
    if not path:
        return None
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise SharedConfigError(f"[store].shared_password_file {path}: {exc.strerror}") from None
    lines = text.splitlines()
    return lines[0].strip() if lines else ""


def connect(url: str, password_file: str = "") -> redis.Redis:
    """A client for redis://HOST:PORT/DB, rediss://HOST:PORT/DB or unix:///path?db=N, with
    short socket timeouts, a small retry (a pooled connection that died with a restarted Redis
    is replaced at once), and the password from the file."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise SharedConfigError(f"[store].shared {url!r}: not redis://, rediss:// or unix://")
    if parts.password:
        raise SharedConfigError("[store].shared: the password goes in shared_password_file")
    kw: dict[str, Any] = {
        "socket_timeout": SOCKET_TIMEOUT_S,
        "socket_connect_timeout": SOCKET_TIMEOUT_S,
        "retry": Retry(ExponentialBackoff(cap=0.2, base=0.02), 2),
        "retry_on_error": [redis.ConnectionError, redis.TimeoutError],
        "health_check_interval": 0,
        "decode_responses": True,
        "password": read_password(password_file),
    }
    if parts.scheme == "unix":
        db = parse_qs(parts.query).get("db", ["0"])[0]
        return redis.Redis(unix_socket_path=parts.path, db=int(db), **kw)
    return redis.Redis.from_url(url, **kw)


def _member(total: int, rcpts: int, queue_id: str) -> str:
    return f"{total:020d}:{rcpts}:{uuid.uuid4().hex}:{queue_id}"


@dataclass
class RedisRateTransaction:
    store: RedisRateStore
    identity: str
    token: str
    now: float  # the event time: never before the sender's latest
    state: RateState
    total: int = 0  # the sender's running recipients total so far
    members: list[str] = field(default_factory=list)
    locking: tuple[str, str, str] | None = None

    def count(self, rcpts: int, queue_id: str) -> None:
        self.total += int(rcpts)
        self.members.append(_member(self.total, int(rcpts), queue_id))

    def lock(self, cap: str, queue_id: str) -> None:
        if self.locking is None:
            self.locking = (datetime.fromtimestamp(self.now, UTC).isoformat(), cap, queue_id)


class RedisRateStore:
    """RateStore's interface (transaction, state) and senders.py's (identities, read, unlock),
    over Redis. `audit_db`: the local database, where a lock this server took is audited."""

    def __init__(self, client: redis.Redis, audit_db: str | Path | None = None) -> None:
        self.client = client
        self.audit_db = str(audit_db) if audit_db else ""
        self._read = client.register_script(_READ)
        self._commit = client.register_script(_COMMIT)
        self._release = client.register_script(_RELEASE)
        self._unlock = client.register_script(_UNLOCK)
        self._audit_lock = threading.Lock()
        self._audit: Any = None
        self._stripes = [threading.Lock() for _ in range(STRIPES)]
        # The suppression list every server shares (feedback.md, issue 19).
        self.suppressions = RedisSuppressions(client)

    @classmethod
    def open(
        cls, url: str, password_file: str = "", audit_db: str | Path | None = None
    ) -> RedisRateStore:
        return cls(connect(url, password_file), audit_db)

    # ---- the milter's transaction ---------------------------------------------------------

    def _state(self, reply: list[Any], identity: str, windows: list[int]) -> RateState:
        _, _, _, locked_at, cap, queue_id, *counts = reply
        lock = Lock(identity, locked_at, cap, queue_id) if locked_at else None
        return RateState(
            lock=lock,
            counts=tuple(
                (w, int(counts[2 * i]), int(counts[2 * i + 1])) for i, w in enumerate(windows)
            ),
        )

    @contextmanager
    def transaction(
        self, identity: str, windows: list[int], now: datetime
    ) -> Iterator[RedisRateTransaction]:
        # This process's threads queue for a sender here, without traffic; only servers
        # contend for its mutex in Redis.
        stripe = self._stripes[hash(identity) % len(self._stripes)]
        with stripe, self._transaction(identity, windows, now) as tx:
            yield tx

    @contextmanager
    def _transaction(
        self, identity: str, windows: list[int], now: datetime
    ) -> Iterator[RedisRateTransaction]:
        keys = _keys(identity)
        token = secrets.token_hex(16)
        args: list[str | int] = [token, LEASE_MS, _ts(now.timestamp()), *windows]
        deadline = time.monotonic() + WAIT_S
        pause = 0.001
        while True:
            reply = self._read(keys=list(keys), args=args)
            if int(reply[0]) == 1:
                break
            if time.monotonic() > deadline:
                raise SharedBusy(f"{identity}: its counts stayed busy for {WAIT_S:.0f} s")
            time.sleep(pause * (0.5 + random.random()))
            pause = min(pause * 2, 0.005)
        tx = RedisRateTransaction(
            self,
            identity,
            token,
            float(reply[1]),
            self._state(reply, identity, windows),
            total=int(reply[2]),
        )
        try:
            yield tx
        except BaseException:
            try:
                self._release(keys=[keys[0]], args=[token])
            except redis.RedisError as exc:
                log.warning("%s: mutex not freed (its lease ends it): %s", identity, exc)
            raise
        lock_args: list[str] = ["1", *tx.locking] if tx.locking else []
        done = self._commit(
            keys=[*keys, IDS, LOCKS, f"{keys[0]}:done:{token}"],
            args=[
                token,
                _ts(tx.now),
                KEEP_EVENTS_S,
                identity,
                len(tx.members),
                *tx.members,
                *lock_args,
            ],
        )
        if int(done) != 1:
            raise SharedBusy(f"{identity}: the lease ran out before the commit; nothing written")
        if tx.locking:
            self._audit_lock_taken(identity, *tx.locking)

    def _audit_lock_taken(self, identity: str, when: str, cap: str, queue_id: str) -> None:
        if not self.audit_db:
            return
        try:
            with self._audit_lock:
                if self._audit is None:
                    self._audit = open_db(self.audit_db)
                records.add_audit(
                    self._audit,
                    when,
                    "postwarden",
                    "lock",
                    [identity],
                    f"broke {cap} with {queue_id}",
                )
        except Exception as exc:  # noqa: BLE001  (the lock is in Redis; its audit row is extra)
            log.error("%s: lock taken but not audited locally: %s", identity, exc)

    def state(self, identity: str, windows: list[int], now: datetime) -> RateState:
        return self.read(identity, windows, now.timestamp())

    # ---- senders.py: `postwarden senders`, `unlock`, the TUI -------------------------------

    def read(self, identity: str, windows: list[int], now: float) -> RateState:
        reply = self._read(keys=list(_keys(identity)), args=["", 0, _ts(now), *windows])
        return self._state(reply, identity, windows)

    def identities(self, since: float, locked_only: bool) -> set[str]:
        names: set[str] = {str(n) for n in self.client.smembers(LOCKS)}
        if not locked_only:
            recent: Any = self.client.zrangebyscore(IDS, f"({_ts(since)}", "+inf")
            names |= {str(n) for n in recent}
        return names

    def unlock(self, identity: str) -> bool:
        _, ev, lock = _keys(identity)
        return int(self._unlock(keys=[lock, ev, LOCKS, IDS], args=[identity])) == 1

    # ---- moving a server's SQLite counts and locks here -----------------------------------

    def import_events(self, identity: str, events: list[tuple[float, int, str]]) -> int:
        """Merge (time, rcpts, queue_id) events into the sender's (`postwarden db
        move-to-shared`), its running totals recomputed in time order. Run before the
        daemons use the shared store: the sender's set is rewritten whole."""
        if not events:
            return 0
        _, ev, _ = _keys(identity)
        merged: list[tuple[float, int, str]] = list(events)
        existing: Any = self.client.zrange(ev, 0, -1, withscores=True)
        for member, score in existing:
            _, n, _, qid = str(member).split(":", 3)
            merged.append((float(score), int(n), qid))
        merged.sort(key=lambda e: e[0])
        total = 0
        members: dict[str, float] = {}
        for t, rcpts, queue_id in merged:
            total += int(rcpts)
            members[_member(total, int(rcpts), queue_id)] = t
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(ev)
        pipe.zadd(ev, members)
        pipe.expire(ev, KEEP_EVENTS_S)
        pipe.zadd(IDS, {identity: merged[-1][0]}, gt=True)
        pipe.execute()
        return len(events)

    def import_lock(self, identity: str, locked_at: str, cap: str, queue_id: str) -> bool:
        _, _, lock = _keys(identity)
        if not self.client.hsetnx(lock, "locked_at", locked_at):
            return False
        self.client.hset(lock, mapping={"cap": cap, "queue_id": queue_id})
        self.client.sadd(LOCKS, identity)
        return True

    # ---- the notice state --------------------------------------------------------------------

    def notice_secret(self, local: str) -> str:
        """The key every server's notices are bound with: the first server's own key."""
        key = f"{PREFIX}notice-secret"
        self.client.set(key, local, nx=True)
        return str(self.client.get(key) or local)


class RedisUsedTokens:
    """NoticeGuard's used-token set in Redis: a notice seen by one server is used on all."""

    def __init__(self, client: redis.Redis, ttl: int = NOTICE_TTL_S) -> None:
        self.client = client
        self.ttl = ttl

    def first_use(self, message_id: str, now: float) -> bool:
        key = f"{PREFIX}notice:{hashlib.sha256(message_id.encode()).hexdigest()}"
        return bool(self.client.set(key, _ts(now), nx=True, ex=self.ttl))


class SharedSet:
    """A named set shared by every server (member -> value), for lists such as suppressions:

        s = SharedSet(client, "suppressed")
        s.add("bob@example.org", '{"reason": "complaint"}'); s.contains("bob@example.org")

    Members are compared as given: normalise them (lower-case an address) before calling."""

    def __init__(self, client: redis.Redis, name: str) -> None:
        self.client = client
        self.key = f"{PREFIX}set:{name}"

    def add(self, member: str, value: str = "") -> bool:
        """True when the member is new."""
        return bool(self.client.hset(self.key, member, value))

    def remove(self, member: str) -> bool:
        return bool(self.client.hdel(self.key, member))

    def contains(self, member: str) -> bool:
        return bool(self.client.hexists(self.key, member))

    def get(self, member: str) -> str | None:
        value = self.client.hget(self.key, member)
        return None if value is None else str(value)

    def members(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in self.client.hgetall(self.key).items()}


# ---- the suppression list every server shares (feedback.md) --------------------------------

SUPPRESSED = f"{PREFIX}suppressed"

# KEYS: the list. ARGV: address, domain, the entry (JSON). 1 when added, 0 when that address is
# suppressed for that domain already. One atomic step: two servers adding at once keep both.
_SUPPRESS = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
local t = {}
if cur then t = cjson.decode(cur) end
if t[ARGV[2]] ~= nil then return 0 end
t[ARGV[2]] = cjson.decode(ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(t))
return 1
"""

# KEYS: the list. ARGV: address, "1" to end every entry of it (else "0"), domain. Returns how
# many ended.
_UNSUPPRESS = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return 0 end
local t = cjson.decode(cur)
local n = 0
if ARGV[2] == '1' then
  for _ in pairs(t) do n = n + 1 end
  redis.call('HDEL', KEYS[1], ARGV[1])
  return n
end
if t[ARGV[3]] == nil then return 0 end
t[ARGV[3]] = nil
if next(t) == nil then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(t))
end
return 1
"""


def _scopes(address: str, raw: Any) -> dict[str, dict[str, Any]]:
    """One address's entries, read from Redis: a value that is not what this module writes
    raises ValueError (the milter then fails the message: never a silent pass)."""
    try:
        value = json.loads(str(raw))
    except json.JSONDecodeError as exc:
        raise ValueError(f"suppression of {address!r} in the shared store is not JSON") from exc
    if not isinstance(value, dict) or not all(isinstance(e, dict) for e in value.values()):
        raise ValueError(f"suppression of {address!r} in the shared store is malformed")
    return {str(d): e for d, e in value.items()}


class RedisSuppressions:
    """store.feedback.SuppressionList in Redis: every server naming the same Redis reads and
    writes one list. Removing an entry deletes it (the audit row, on the server that removed
    it, is its history). Redis unreachable: every call raises SharedUnavailable."""

    def __init__(self, client: redis.Redis, server: str = "") -> None:
        self.client = client
        self.server = server or socket.getfqdn()
        self._suppress = client.register_script(_SUPPRESS)
        self._unsuppress = client.register_script(_UNSUPPRESS)

    def suppress(
        self,
        address: str,
        domain: str,
        created_at: str,
        source: str,
        reason: str,
        note: str = "",
        report: int | None = None,
        details: dict[str, str] | None = None,
    ) -> bool:
        d = details or {}
        entry = {
            "created_at": created_at,
            "source": source,
            "reason": reason,
            "note": note,
            # The report's id in the database of the server that stored it.
            "report": report,
            "feedback_type": d.get("feedback_type"),
            "reporter": d.get("reporter"),
            "message_id": d.get("message_id"),
            "server": d.get("server") or self.server,
        }
        args = [address.lower(), domain.lower(), json.dumps(entry, sort_keys=True)]
        return int(self._suppress(keys=[SUPPRESSED], args=args)) == 1

    def unsuppress(self, address: str, domain: str | None, removed_at: str, note: str = "") -> int:
        args = [address.lower(), "1" if domain is None else "0", (domain or "").lower()]
        return int(self._unsuppress(keys=[SUPPRESSED], args=args))

    def entries(self, domain: str | None = None) -> list[dict[str, Any]]:
        """As store.feedback.suppressions: newest first, `domain` with the server-wide ones
        (`id` is None: the entry has no row; `server` says which server added it)."""
        out: list[dict[str, Any]] = []
        raw: Any = self.client.hgetall(SUPPRESSED)
        for address, value in raw.items():
            for scope, e in _scopes(str(address), value).items():
                if domain is not None and scope not in ("", domain.lower()):
                    continue
                row = {"id": None, "address": str(address), "domain": scope}
                for k in ("created_at", "source", "reason", "note"):
                    row[k] = str(e.get(k) or "")
                for k in ("report", "feedback_type", "reporter", "message_id", "server"):
                    row[k] = e.get(k)
                out.append(row)
        out.sort(key=lambda r: (r["created_at"], r["address"], r["domain"]), reverse=True)
        return out

    def _found(self, address: str, raw: Any) -> list[Suppression]:
        if raw is None:
            return []
        return [
            Suppression(address, scope, str(e.get("created_at") or ""), str(e.get("reason") or ""))
            for scope, e in _scopes(address, raw).items()
        ]

    def at_rcpt(self, address: str, domain: str) -> Suppression | None:
        """One round trip: the address's entries, then its scope for `domain` or every one."""
        address = address.lower()
        for s in self._found(address, self.client.hget(SUPPRESSED, address)):
            if s.applies_to(domain):
                return s
        return None

    def for_rcpts(self, addresses: list[str]) -> list[Suppression]:
        """Every entry of these recipients (any domain), in one round trip."""
        unique = list(dict.fromkeys(a.lower() for a in addresses))
        if not unique:
            return []
        values: Any = self.client.hmget(SUPPRESSED, unique)
        return [s for a, v in zip(unique, values, strict=True) for s in self._found(a, v)]


def move_suppressions(conn: Any, shared: RedisSuppressions) -> tuple[int, int]:
    """Copy the database's active suppressions into the shared list: (copied, there already)."""
    copied = already = 0
    for row in feedback.active_rows(conn):
        details = {k: str(row[k]) for k in ("feedback_type", "reporter", "message_id") if row[k]}
        done = shared.suppress(
            str(row["address"]),
            str(row["domain"]),
            str(row["created_at"]),
            str(row["source"]),
            str(row["reason"]),
            str(row["note"] or ""),
            row["report"],
            details,
        )
        copied, already = (copied + 1, already) if done else (copied, already + 1)
    return copied, already


def open_shared(store: Any) -> RedisRateStore | None:
    """The shared store a [store] section names, or None when [store].shared is empty."""
    if not store.shared:
        return None
    return RedisRateStore.open(store.shared, store.shared_password_file, store.database)


def open_rates(store: Any) -> RateBackend:
    """The rate store the milter uses: Redis when [store].shared names one, else SQLite."""
    shared = open_shared(store)
    return shared if shared is not None else RateStore(store.database)


# ---- `postwarden db move-to-shared`: this server's SQLite counts and locks into Redis -------


@dataclass
class Moved:
    identities: int = 0
    events: int = 0
    locks: int = 0
    locks_already: int = 0
    suppressions: int = 0
    suppressions_already: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def move_to_shared(
    conn: Any, shared: RedisRateStore, marker: str, now: float, force: bool = False
) -> Moved:
    """Copy the database's rate events of the last KEEP_EVENTS_S, its locks and its active
    suppressions into Redis, once per database (`marker` names it; `force` copies again, counting the events twice). The
    SQLite rows stay: with [store].shared = "" again they are used as before."""
    key = f"{PREFIX}moved:{hashlib.sha256(marker.encode()).hexdigest()}"
    if not force and shared.client.exists(key):
        raise AlreadyMoved(
            f"{marker} was moved to the shared store already (--force copies it again)"
        )
    by_identity: dict[str, list[tuple[float, int, str]]] = {}
    for identity, t, rcpts, queue_id in conn.execute(
        "SELECT identity, time, rcpts, queue_id FROM rate_events WHERE time > ? ORDER BY time",
        [now - KEEP_EVENTS_S],
    ).fetchall():
        by_identity.setdefault(identity, []).append((float(t), int(rcpts), str(queue_id or "")))
    out = Moved()
    for identity, events in by_identity.items():
        out.events += shared.import_events(identity, events)
    locks = conn.execute("SELECT identity, locked_at, cap, queue_id FROM locks").fetchall()
    for identity, locked_at, cap, queue_id in locks:
        if shared.import_lock(identity, str(locked_at), str(cap), str(queue_id or "")):
            out.locks += 1
        else:
            out.locks_already += 1
    out.identities = len(set(by_identity) | {r[0] for r in locks})
    out.suppressions, out.suppressions_already = move_suppressions(conn, shared.suppressions)
    shared.client.set(key, datetime.fromtimestamp(now, UTC).isoformat())
    return out
