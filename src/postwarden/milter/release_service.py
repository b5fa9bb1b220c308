"""`postwarden releaser`: the releaser (releaser.py) as a process of its own.

Postfix lets only root and its mail_owner run `postsuper -H`. The milter runs as the service
user with no privileges (the .deb's postwarden.service), so with `[milter].releaser = "service"`
it starts no releaser, and this command, run as root by postwarden-releaser.service, runs the
same Releaser loop over the same SQLite schedule.

Privileges: started as root, it keeps root only as its real and saved user id and becomes the
service user ([milter].user) for everything it does itself: it reads the config and the keys,
and opens the database, as that user (so a -wal or -shm file SQLite makes is the service user's,
never root's). Only the Postfix commands it runs (postsuper -H, postqueue -j and -i) take root
back, each in its own child (releaser._run). The unit gives it CAP_SETUID and CAP_SETGID only.

Policy: it re-reads the policy files (the pace, the warm-up schedules) on SIGHUP, and whenever
the milter has started or reloaded with a policy other than its own (the milter records its
policy hash in the database; looked at every FOLLOW_S seconds), so `postwarden reload` reloads
both. A policy with errors is refused and the old one kept. SIGTERM and SIGINT stop it after
the round in hand.
"""

from __future__ import annotations

import logging
import os
import pwd
import signal
import sqlite3
import threading
import time
from pathlib import Path

import sqlite_utils

from postwarden import EX_CONFIG
from postwarden.config import Config, ConfigError, load_config
from postwarden.config.loader import Problem, load_daemon_config
from postwarden.milter.daemon import setup_logging
from postwarden.milter.releaser import Releaser, in_daemon
from postwarden.store import daemon_state
from postwarden.store.db import open_db

log = logging.getLogger("postwarden")

EX_NOPERM = 77
FOLLOW_S = 2.0  # how often it looks whether the milter reloaded its policy


def become(user: str) -> None:
    """Effective ids (and groups) of `user`; root stays the real and saved user id."""
    pw = pwd.getpwnam(user)
    os.initgroups(user, pw.pw_gid)
    os.setegid(pw.pw_gid)
    os.seteuid(pw.pw_uid)


def _milter_policy(state: sqlite_utils.Database) -> str:
    try:
        return daemon_state.latest_policy_hash(state)
    except sqlite3.Error as exc:  # a database not migrated yet, or busy: look again later
        log.warning("releaser: cannot read the milter's policy: %s", exc)
        return ""


def serve(path: Path) -> int:
    problems: list[Problem] = []
    daemon = load_daemon_config(path, problems)
    if daemon is None:
        for p in problems:
            print(f"postwarden releaser: {p}")
        return EX_CONFIG
    if in_daemon(daemon):
        print(
            f'postwarden releaser: {path}: [milter].releaser = "thread": the milter releases'
            ' paced and warm-up holds itself; set it to "service" to run this command instead'
            " (never both)"
        )
        return EX_CONFIG
    if os.getuid() != 0:
        print(
            "postwarden releaser: must be started as root: Postfix allows `postsuper -H` only"
            " to root (and its mail_owner)"
        )
        return EX_NOPERM
    user = daemon.milter.user
    if os.geteuid() == 0 and user != "root":
        try:
            become(user)
        except (KeyError, OSError) as exc:
            print(f"postwarden releaser: cannot become [milter].user {user!r}: {exc}")
            return EX_CONFIG
    try:
        config = load_config(path)
    except ConfigError as exc:
        for p in exc.problems:
            print(f"postwarden releaser: {p}")
        return EX_CONFIG
    setup_logging(config.daemon.log.to, config.daemon.log.level)
    holder: list[Config] = [config]
    releaser = Releaser(config.daemon.store.database, lambda: holder[0])
    stop = threading.Event()
    reload = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        (reload if signum == signal.SIGHUP else stop).set()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    log.info(
        "releaser: serving %s as uid %d (Postfix commands as root), policy %s",
        config.daemon.store.database,
        os.geteuid(),
        config.policy.hash,
    )
    releaser.start()
    state = open_db(config.daemon.store.database, readonly=True)
    followed = _milter_policy(state)
    last_look = time.monotonic()
    while not stop.wait(0.2):
        why = ""
        if reload.is_set():
            reload.clear()
            why = "SIGHUP"
        elif time.monotonic() - last_look > FOLLOW_S:
            last_look = time.monotonic()
            seen = _milter_policy(state)
            if seen and seen != followed:
                followed = seen
                if seen != holder[0].policy.hash:
                    why = f"the milter reloaded (policy {seen})"
        if why:
            try:
                holder[0] = load_config(path)
                log.info("releaser: %s: policy %s", why, holder[0].policy.hash)
            except ConfigError as exc:
                for p in exc.problems:
                    log.error("releaser: reload refused: %s", p)
    log.info("releaser: stopping")
    releaser.stop()
    log.info("releaser: stopped after releasing %d message(s)", releaser.released)
    return 0
