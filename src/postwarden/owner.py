"""The service user: who the daemon runs as, and so who must own what an admin's command
creates as root.

`[milter].user` in postwarden.toml names it (default `postwarden`, the user the .deb creates and
the unit's User=). Run as root, `keygen`, `db migrate` and `import-opendkim` give the files and
folders they create to that user, and `check-config` checks, in a child running as that user,
that it can read every key file, policy file and postwarden.toml.
"""

from __future__ import annotations

import os
import pwd
import tomllib
from dataclasses import dataclass
from pathlib import Path

DEFAULT_USER = "postwarden"


@dataclass(frozen=True)
class Owner:
    name: str
    uid: int
    gid: int


def user_name(config_file: Path) -> str:
    """[milter].user of postwarden.toml, read without validating the rest (keygen must work
    while a policy is broken); the default when the file or the key is missing."""
    try:
        with config_file.open("rb") as fh:
            raw = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError):
        return DEFAULT_USER
    milter = raw.get("milter")
    name = milter.get("user") if isinstance(milter, dict) else None
    return name if isinstance(name, str) and name else DEFAULT_USER


def service_owner(name: str) -> Owner | None:
    """The owner to give new files to: only when running as root and the user exists."""
    if os.geteuid() != 0:
        return None
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        return None
    return Owner(name, pw.pw_uid, pw.pw_gid)


def is_root() -> bool:
    return os.geteuid() == 0


def user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def make_dirs(path: Path, owner: Owner | None, mode: int = 0o750) -> None:
    """mkdir -p, each folder it creates given to owner."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir(mode=mode)
        give(d, owner)


def give(path: Path, owner: Owner | None) -> None:
    if owner is not None:
        os.chown(path, owner.uid, owner.gid)


def unreadable_as(user: str, paths: list[str]) -> list[tuple[str, str]] | None:
    """(path, why) for each path `user` cannot read, tried by a forked child that has become
    that user with its groups (os.setresuid: no interpreter of ours need be reachable by it);
    None when that cannot be checked (not root, no such user)."""
    if os.geteuid() != 0 or not paths:
        return None
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        return None
    groups = os.getgrouplist(user, pw.pw_gid)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: become the user, try each path, report, exit
        code = 0
        try:
            os.close(read_end)
            os.setgroups(groups)
            os.setresgid(pw.pw_gid, pw.pw_gid, pw.pw_gid)
            os.setresuid(pw.pw_uid, pw.pw_uid, pw.pw_uid)
            lines = []
            for path in paths:
                try:
                    with open(path, "rb") as fh:
                        fh.read(1)
                except OSError as exc:
                    lines.append(f"{path}\t{exc.strerror}\n")
            os.write(write_end, "".join(lines).encode())
        except OSError:
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    chunks = []
    with os.fdopen(read_end, "rb") as fh:
        chunks.append(fh.read())
    _, status = os.waitpid(pid, 0)
    out = []
    for line in b"".join(chunks).decode(errors="replace").splitlines():
        path, _, why = line.partition("\t")
        out.append((path, why))
    if os.waitstatus_to_exitcode(status) != 0:
        out.append(("", f"the check as {user} could not run"))
    return out
