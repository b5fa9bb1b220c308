"""The releaser as a service of its own (streams.md, [milter].releaser = "service").

The milter runs as an unprivileged user, as the .deb's postwarden.service runs it (its own user
in groups postfix and postdrop, NoNewPrivileges, no capabilities), and such a user may not run
`postsuper -H` (shown first). `postwarden releaser` runs beside it as root, under the sandbox of
deploy/postfix/postwarden-releaser.service as read from the unit (ProtectSystem=strict but for
its ReadWritePaths=, mapped to this stack's queue and database folder; ProtectHome=;
NoNewPrivileges=; CapabilityBoundingSet=), and lets paced mail out at the pace:
6 bulk messages at 2/second, released in order, all delivered once, never more than 2 in any second at
the sink. The database stays the service user's.

Not emulated here (no systemd in the test machine): PrivateTmp=, SystemCallFilter=,
RestrictAddressFamilies=, IPAddressDeny= (the releaser and Postfix's commands use only unix
sockets; see the unit's comment for why it cannot have a network namespace of its own).
"""

from __future__ import annotations

import pwd
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from postwarden.config.models import parse_rate
from postwarden.sandbox import SandboxError
from tests.e2e.conftest import Stack
from tests.e2e.streams_stack import WIDE_CAPS, BulkSink, streams_stack
from tests.e2e.test_pacing import (
    arrivals,
    held_rows,
    most_in_any_window,
    release_order,
    submit,
)
from tests.helpers import REPO

UNIT = REPO / "deploy" / "postfix" / "postwarden-releaser.service"
PACE = "2/second"
N = 6
LIMIT, WINDOW = parse_rate(PACE)


def unit_settings() -> dict[str, str]:
    out: dict[str, str] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def _quote(arg: str) -> str:
    return "'" + arg.replace("'", "'\\''") + "'"


def interpreter_mounts(spare: Path) -> list[str]:
    """Shell lines for a mount namespace: ProtectHome= (an empty /root and /home), but for the
    Python this test runs under when it lives there (pyenv under /root on the test machine; the
    .deb's is /opt/postwarden), bound back in at its own path. spare: an empty folder."""
    base = sys.base_prefix
    lines = []
    if base.startswith(("/root/", "/home/")):
        spare.mkdir(exist_ok=True)
        lines.append(f"mount --bind {base} {spare}")
    lines += [
        "mount -t tmpfs -o mode=0711 tmpfs /root",
        "mount -t tmpfs -o mode=0711 tmpfs /home",
    ]
    if base.startswith(("/root/", "/home/")):
        lines += [f"mkdir -p {base}", f"mount --bind {spare} {base}"]
    return lines


def as_service_user(user: str, cmd: list[str], spare: Path) -> list[str]:
    """cmd as postwarden.service runs the milter: the user and its groups, no new privileges,
    no capabilities, ProtectHome=."""
    script = ["set -e", "mount --make-rprivate /", *interpreter_mounts(spare)]
    script.append("exec " + " ".join(_quote(a) for a in _setpriv_user(user, cmd)))
    return ["unshare", "--mount", "--", "sh", "-c", "\n".join(script)]


def _setpriv_user(user: str, cmd: list[str]) -> list[str]:
    return [
        "setpriv",
        f"--reuid={user}",
        f"--regid={user}",
        "--init-groups",
        "--no-new-privs",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--",
        *cmd,
    ]


def as_releaser_unit(cmd: list[str], path_map: dict[str, str], spare: Path) -> list[str]:
    """cmd as postwarden-releaser.service runs it, its settings read from the unit."""
    unit = unit_settings()
    assert unit["User"] == "root" and unit["NoNewPrivileges"] == "yes"
    assert unit["ProtectSystem"] == "strict" and unit["ProtectHome"] == "yes"
    assert unit["IPAddressDeny"] == "any" and "PrivateNetwork" not in unit
    assert "StateDirectory" not in unit  # it would give /var/lib/postwarden to root
    caps = unit["CapabilityBoundingSet"].split()
    assert caps == ["CAP_SETUID", "CAP_SETGID"]
    rw = [path_map[p] for p in unit["ReadWritePaths"].split()]
    script = ["set -e", "mount --make-rprivate /"]
    script += [f"mount --bind {p} {p}" for p in rw]
    script += interpreter_mounts(spare)
    script += [
        "for m in $(findmnt -rno TARGET | sort -u); do case $m in "
        "/proc|/proc/*|/sys|/sys/*|/dev|/dev/*|/root|/root/*|/home"
        + "".join(f"|{p}" for p in rw)
        + ") ;; *) mount -o remount,bind,ro $m 2>/dev/null || true ;; esac; done",
        "mount -o remount,bind,ro /",
        f"umask {unit['UMask']}",
    ]
    bounding = "-all," + ",".join("+" + c.removeprefix("CAP_").lower() for c in caps)
    setpriv = ["setpriv", "--no-new-privs", "--inh-caps=-all", f"--bounding-set={bounding}"]
    script.append("exec " + " ".join(_quote(a) for a in [*setpriv, "--", *cmd]))
    return ["unshare", "--mount", "--", "sh", "-c", "\n".join(script)]


@pytest.fixture(scope="module")
def user() -> Iterator[str]:
    """A service user of this test's own, made as postinst makes postwarden: groups postfix
    (the socket) and postdrop (Postfix's public/ sockets)."""
    name = f"pwrel{uuid.uuid4().hex[:6]}"
    subprocess.run(
        [
            "useradd",
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            "--groups",
            "postfix,postdrop",
            name,
        ],
        check=True,
    )
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], check=False)


def start_unprivileged(user: str) -> Callable[[Stack], None]:
    def start(s: Stack) -> None:
        text = s.config.read_text()
        assert 'user = "root"\n' in text
        s.config.write_text(
            text.replace('user = "root"\n', f'user = "{user}"\nreleaser = "service"\n', 1)
        )
        # What postinst gives the service user: its config folder's files, its state, and the
        # socket folder inside Postfix's spool (user:postfix 0750).
        subprocess.run(["chown", "-R", f"{user}:{user}", str(s.config.parent)], check=True)
        sock_dir = s.sandbox.socket_path.parent
        shutil.chown(sock_dir, user=user, group="postfix")
        sock_dir.chmod(0o750)
        s.sandbox.start_sink()
        s.sandbox.start_postfix()
        log = s.sandbox.milter_log.open("ab")
        cmd = [s.sandbox.python, "-m", "postwarden", "--config", str(s.config), "milter"]
        proc = subprocess.Popen(
            as_service_user(user, cmd, s.root / "python-mnt"),
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        s.sandbox.milter_proc = proc
        deadline = time.monotonic() + 20
        while not s.sandbox.socket_path.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SandboxError(f"milter: {s.sandbox.milter_log.read_text()[-3000:]}")
            time.sleep(0.05)

    return start


@pytest.fixture(scope="module")
def st(user: str) -> Iterator[tuple[Stack, BulkSink]]:
    yield from streams_stack(
        "releaser", f'\n[streams.bulk]\npace = "{PACE}"\n', WIDE_CAPS, start_unprivileged(user)
    )


def proc_status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def test_paced_mail_released_at_the_pace_by_the_root_releaser_beside_an_unprivileged_milter(
    st: tuple[Stack, BulkSink], user: str
) -> None:
    stack, bulk = st
    sb = stack.sandbox
    uid = pwd.getpwnam(user).pw_uid
    assert sb.milter_proc is not None
    milter = proc_status(sb.milter_proc.pid)
    assert milter["Uid"].split() == [str(uid)] * 4
    assert int(milter["CapEff"], 16) == 0 and int(milter["CapBnd"], 16) == 0
    assert milter["NoNewPrivs"] == "1"
    # The milter's own user may not release: why the releaser is a root process of its own.
    res = subprocess.run(
        _setpriv_user(user, ["postsuper", "-c", str(sb.conf_dir), "-H", "-"]),
        input="",
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode != 0 and "reserved for the superuser" in res.stderr, res.stderr

    path_map = {
        "/var/spool/postfix": str(sb.queue_dir),
        "/var/lib/postwarden": str(stack.config.parent),
    }
    rlog_path = stack.root / "releaser.log"
    with rlog_path.open("ab") as rlog:
        releaser = subprocess.Popen(
            as_releaser_unit(
                [sb.python, "-m", "postwarden", "--config", str(stack.config), "releaser"],
                path_map,
                stack.root / "python-mnt",
            ),
            stdout=rlog,
            stderr=rlog,
            start_new_session=True,
        )
    try:
        assert sb.wait_for(lambda: "releaser: serving" in rlog_path.read_text(), 20), (
            rlog_path.read_text()
        )
        status = proc_status(releaser.pid)
        # root kept only as the real and saved user id; the rest is the service user's
        assert status["Uid"].split() == ["0", str(uid), "0", str(uid)]
        assert int(status["CapBnd"], 16) == (1 << 6) | (1 << 7)  # CAP_SETGID, CAP_SETUID
        assert int(status["CapEff"], 16) == 0 and status["NoNewPrivs"] == "1"

        started = time.monotonic()
        submit(stack, "svc", N)
        assert sb.wait_for(lambda: len(held_rows(stack, "svc")) == N, 60)
        rows = held_rows(stack, "svc")
        assert all(
            [x["check"] + "." + x["code"] for x in r["reasons"]] == ["pace.paced"]  # type: ignore[index, union-attr]
            for r in rows
        )
        assert sb.wait_for(lambda: len(arrivals(bulk, "svc")) >= N, 60, interval=0.2), (
            rlog_path.read_text()[-3000:]
        )
        took = time.monotonic() - started
        time.sleep(2)  # nothing more arrives
        got = arrivals(bulk, "svc")
        subjects = [s for _, s in got]
        assert len(subjects) == N and len(set(subjects)) == N  # all, none twice
        # In order: released in the order postwarden held them in (pickup may hand sendmail(1)
        # mail to the milter in another order than it was submitted: CI saw 0000, 0002, 0001).
        held_order = [str(r["subject"]) for r in sorted(rows, key=lambda r: int(r["id"]))]  # type: ignore[call-overload]
        assert release_order(stack, "svc") == held_order
        times = [t for t, _ in got]
        assert most_in_any_window(times, WINDOW) <= LIMIT
        assert times[-1] - times[0] >= (N - LIMIT) * WINDOW / LIMIT  # not faster than the pace
        assert took < 60
        assert not [q for q in sb.queue() if q.get("queue_name") == "hold"]

        # SIGHUP re-reads the policy; so does the milter's reload (`postwarden reload`, which
        # signals the milter alone: the releaser follows the policy the milter records).
        releaser.send_signal(1)
        assert sb.wait_for(lambda: "releaser: SIGHUP: policy" in rlog_path.read_text(), 10)
        extra = stack.config.parent / "policies" / "20-extra.toml"
        extra.write_text(extra.read_text().replace(f'pace = "{PACE}"', 'pace = "3/second"'))
        res = subprocess.run(
            [sb.python, "-m", "postwarden", "--config", str(stack.config), "reload"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert res.returncode == 0, res.stdout + res.stderr
        new_hash = res.stdout.split("policy ", 1)[1].split()[0]
        assert sb.wait_for(
            lambda: (
                f"the milter reloaded (policy {new_hash}): policy {new_hash}"
                in rlog_path.read_text()
            ),
            15,
        ), rlog_path.read_text()[-2000:]
        releaser.terminate()
        assert releaser.wait(20) == 0
    finally:
        if releaser.poll() is None:
            releaser.kill()
            releaser.wait(10)
    rlog = rlog_path.read_text()
    assert rlog.count("released by the releaser") == N, rlog
    milter_log = sb.milter_log.read_text()
    assert 'releaser: not started here: [milter].releaser = "service"' in milter_log
    assert "releaser: started" not in milter_log
    assert "reserved for the superuser" not in rlog + milter_log
    # Whatever the root releaser touched in the database folder is still the service user's.
    for p in stack.config.parent.glob("postwarden.db*"):
        assert p.stat().st_uid == uid, p
