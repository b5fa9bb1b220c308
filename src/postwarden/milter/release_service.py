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

Signals: SIGTERM and SIGINT stop it after the round in hand; SIGHUP re-reads the policy (the
pace and the warm-up schedules); a policy with errors is refused and the old one kept.
"""

from __future__ import annotations

import logging
import os
import pwd
import signal
import threading
from pathlib import Path

from postwarden import EX_CONFIG
from postwarden.config import Config, ConfigError, load_config
from postwarden.config.loader import Problem, load_daemon_config
from postwarden.milter.daemon import setup_logging
from postwarden.milter.releaser import Releaser, in_daemon

log = logging.getLogger("postwarden")

EX_NOPERM = 77


def become(user: str) -> None:
    """Effective ids (and groups) of `user`; root stays the real and saved user id."""
    pw = pwd.getpwnam(user)
    os.initgroups(user, pw.pw_gid)
    os.setegid(pw.pw_gid)
    os.seteuid(pw.pw_uid)


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
    while not stop.wait(0.2):
        if reload.is_set():
            reload.clear()
            try:
                holder[0] = load_config(path)
                log.info("releaser: SIGHUP: policy %s", holder[0].policy.hash)
            except ConfigError as exc:
                for p in exc.problems:
                    log.error("releaser: reload refused: %s", p)
    log.info("releaser: stopping")
    releaser.stop()
    log.info("releaser: stopped after releasing %d message(s)", releaser.released)
    return 0
