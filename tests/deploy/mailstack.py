"""What the deploy tests run: the .deb built by `make deb` and installed with dpkg, and a
private mail server set up the way README.md's "Installing on a mail server" says, with every
system path mapped into a private root:

- a private Postfix (never the system instance, never ports 25/587) with chroot on, as Debian
  ships it; its "port 25" and "submission" services listen on free loopback ports;
- Dovecot (Debian's dovecot-core) giving SASL to the submission service, passdb a passwd-file;
- the installed postwarden, run as its service user under the unit's sandbox emulated: a mount
  namespace with / read-only but for the unit's ReadWritePaths (mapped), private /tmp and
  /var/tmp, /root and /home hidden, no new privileges, no capabilities.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from email import message_from_bytes
from pathlib import Path

from postwarden.sandbox import Sandbox, free_port

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "deploy" / "postfix" / "postwarden.service"
PW = "/usr/bin/postwarden"  # the installed package's command
SERVICE_USER = "postwarden"
# Outside /tmp and /var/tmp, which the unit's PrivateTmp= replaces for the milter.
STACK_ROOT = Path("/var/lib/postwarden-e2e")
# Files a chrooted Postfix daemon needs in its jail (what Debian's postfix init script copies).
CHROOT_FILES = ("localtime", "host.conf", "resolv.conf", "nsswitch.conf", "hosts", "services")

# Paths the machine is watched on: installing and purging the package must leave them as found.
WATCHED = (
    "/opt/postwarden",
    "/usr/bin/postwarden",
    "/etc/postwarden",
    "/var/lib/postwarden",
    "/run/postwarden",
    "/var/spool/postfix/postwarden",
    "/lib/systemd/system/postwarden.service",
    "/usr/lib/tmpfiles.d/postwarden.conf",
    "/usr/share/doc/postwarden",
    # the releaser's unit (streams.md), enabled by postinst, gone after purge
    "/lib/systemd/system/postwarden-releaser.service",
    "/etc/systemd/system/multi-user.target.wants/postwarden-releaser.service",
    "/etc/systemd/system/postwarden-releaser.service",
    "/var/lib/systemd/deb-systemd-helper-enabled/postwarden-releaser.service.dsh-also",
    "/var/lib/systemd/deb-systemd-helper-enabled/multi-user.target.wants/postwarden-releaser.service",
    "/var/lib/systemd/deb-systemd-helper-masked/postwarden-releaser.service",
)


def run(cmd: list[str], *, check: bool = True, **kw: object) -> subprocess.CompletedProcess[str]:
    res: subprocess.CompletedProcess[str] = subprocess.run(  # type: ignore[call-overload]
        cmd, capture_output=True, text=True, check=False, timeout=300, **kw
    )
    if check and res.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)}: exit {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
        )
    return res


def machine_state() -> dict[str, object]:
    def getent(db: str, key: str) -> str:
        return run(["getent", db, key], check=False).stdout.strip()

    return {
        "paths": {p: os.path.lexists(p) for p in WATCHED},
        "user": getent("passwd", SERVICE_USER),
        "group": getent("group", SERVICE_USER),
        "postfix group": getent("group", "postfix"),
        "postdrop group": getent("group", "postdrop"),
        "dpkg": run(
            ["dpkg-query", "-W", "-f", "${Status}", "postwarden"], check=False
        ).stdout.strip(),
    }


def build_deb() -> Path:
    """`make deb`'s own script (the Makefile target adds only `make install` before it)."""
    res = run(["bash", str(REPO / "deploy" / "debian" / "build.sh")], cwd=REPO)
    deb = REPO / res.stdout.strip().splitlines()[-1]
    assert deb.is_file() and re.fullmatch(r"postwarden_[0-9.]+_[a-z0-9]+\.deb", deb.name), deb
    return deb


def stat_of(path: str | Path) -> tuple[str, str, int]:
    st = os.stat(path)
    import grp
    import pwd

    return pwd.getpwuid(st.st_uid).pw_name, grp.getgrgid(st.st_gid).gr_name, st.st_mode & 0o7777


def map_path(path: str, path_map: dict[str, str]) -> str:
    for prefix in sorted(path_map, key=len, reverse=True):
        if path == prefix or path.startswith(prefix + "/"):
            return path_map[prefix] + path[len(prefix) :]
    raise AssertionError(f"{path} has no private counterpart")


# ---- the unit's sandbox ------------------------------------------------------------------------


def unit_settings() -> dict[str, str]:
    out = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def sandboxed(cmd: list[str], path_map: dict[str, str]) -> list[str]:
    """cmd as the unit would run it: as User=/Group= with SupplementaryGroups= (setpriv
    --init-groups: the user's groups, postfix among them), NoNewPrivileges=, no capabilities
    (CapabilityBoundingSet= empty), in a mount namespace where ProtectSystem=strict leaves only
    the unit's ReadWritePaths=, StateDirectory= and RuntimeDirectory= writable (each mapped by
    path_map to its private counterpart), PrivateTmp= and ProtectHome=."""
    unit = unit_settings()
    assert unit["ProtectSystem"] == "strict" and unit["PrivateTmp"] == "yes"
    assert unit["ProtectHome"] == "yes" and unit["CapabilityBoundingSet"] == ""
    rw = unit["ReadWritePaths"].split()
    rw += [f"/var/lib/{unit['StateDirectory']}", f"/run/{unit['RuntimeDirectory']}"]
    mapped = sorted({map_path(p, path_map) for p in rw})
    for p in mapped:
        assert Path(p).is_dir(), p
    script = ["set -e", "mount --make-rprivate /"]
    script += [f"mount --bind {p} {p}" for p in mapped]
    script += [
        "mount -t tmpfs -o mode=1777 tmpfs /tmp",
        "mount -t tmpfs -o mode=1777 tmpfs /var/tmp",
        "mount -t tmpfs -o mode=0000 tmpfs /root",
        "mount -t tmpfs -o mode=0000 tmpfs /home",
        # ProtectSystem=strict: every other mount read-only (API file systems aside).
        "for m in $(findmnt -rno TARGET | sort -u); do case $m in "
        "/proc|/proc/*|/sys|/sys/*|/dev|/dev/*|/tmp|/var/tmp|/root|/home"
        + "".join(f"|{p}" for p in mapped)
        + ") ;; *) mount -o remount,bind,ro $m 2>/dev/null || true ;; esac; done",
        "mount -o remount,bind,ro /",
    ]
    no_new_privs = ["--no-new-privs"] if unit["NoNewPrivileges"] == "yes" else []
    setpriv = [
        "setpriv",
        f"--reuid={unit['User']}",
        f"--regid={unit['Group']}",
        "--init-groups",
        *no_new_privs,
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--",
        *cmd,
    ]
    script.append(f"umask {unit['UMask']}")
    script.append("exec " + " ".join(_quote(a) for a in setpriv))
    return ["unshare", "--mount", "--", "sh", "-c", "\n".join(script)]


def _quote(arg: str) -> str:
    return "'" + arg.replace("'", "'\\''") + "'"


# ---- the private mail server -------------------------------------------------------------------


class MailServer:
    """A private Postfix (chroot on) and Dovecot, set up as README's steps say."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sandbox = Sandbox(root / "postfix")
        self.submission_port = free_port()
        self.dovecot_conf = root / "dovecot" / "dovecot.conf"
        self.milter_proc: subprocess.Popen[bytes] | None = None

    @property
    def conf_dir(self) -> Path:
        return self.sandbox.conf_dir

    @property
    def queue_dir(self) -> Path:
        return self.sandbox.queue_dir

    def prepare_postfix(self) -> None:
        """A private Postfix as Debian's default: chroot on; none of postwarden's settings
        (setup-postfix is what adds them), TLS with a certificate of its own."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        self.sandbox.configure(
            extra_main={
                "smtpd_milters": "",
                "non_smtpd_milters": "",
                "milter_default_action": "accept",
                "disable_mime_output_conversion": "no",
                "smtp_line_length_limit": "998",
                "message_reject_characters": "",
                "smtpd_authorized_xclient_hosts": "",
                "smtpd_tls_cert_file": str(self.root / "tls.crt"),
                "smtpd_tls_key_file": str(self.root / "tls.key"),
                "smtpd_tls_security_level": "may",
            }
        )
        run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                f"/CN={self.sandbox.myhostname}",
                "-keyout",
                str(self.root / "tls.key"),
                "-out",
                str(self.root / "tls.crt"),
            ]
        )
        (self.root / "tls.key").chmod(0o600)
        pc = ["postconf", "-c", str(self.conf_dir)]
        # Debian's chroot: every service as in master.cf ("y" where it says so), postlog aside.
        run([*pc, "-F", "*/*/chroot = y"])
        run([*pc, "-F", "postlog/unix-dgram/chroot = n"])
        for svc in ("local/unix", "virtual/unix", "proxymap/unix", "proxywrite/unix"):
            run([*pc, "-F", f"{svc}/chroot = n"], check=False)
        etc = self.queue_dir / "etc"
        etc.mkdir(parents=True, exist_ok=True)
        for name in CHROOT_FILES:
            if Path("/etc", name).exists():
                shutil.copy(Path("/etc", name), etc / name)

    def smtp_service(self) -> str:
        return f"127.0.0.1:{self.sandbox.smtp_port}"

    def submission_service(self) -> str:
        return f"127.0.0.1:{self.submission_port}"

    def start_dovecot(self, users: dict[str, str]) -> None:
        d = self.dovecot_conf.parent
        d.mkdir(parents=True, exist_ok=True)
        (d / "passwd").write_text("".join(f"{u}:{{PLAIN}}{p}\n" for u, p in users.items()))
        (d / "passwd").chmod(0o640)
        shutil.chown(d / "passwd", group="dovecot")
        self.dovecot_conf.write_text(
            f"""\
protocols =
listen = 127.0.0.1
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {d}/passwd
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home=/nonexistent
}}
service auth {{
  unix_listener {self.queue_dir}/private/auth {{
    mode = 0660
    user = postfix
    group = postfix
  }}
}}
"""
        )
        # Postfix's private/ is the postfix user's (postfix start checks).
        (self.queue_dir / "private").mkdir(mode=0o700, parents=True, exist_ok=True)
        shutil.chown(self.queue_dir / "private", user="postfix")
        # It forks into the background keeping its descriptors: no pipes to wait on.
        subprocess.run(
            ["dovecot", "-c", str(self.dovecot_conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=True,
            timeout=30,
        )
        deadline = time.monotonic() + 15
        while not (self.queue_dir / "private" / "auth").exists():
            assert time.monotonic() < deadline, (d / "dovecot.log").read_text()
            time.sleep(0.1)

    def stop_dovecot(self) -> None:
        pid_file = self.dovecot_conf.parent / "run" / "master.pid"
        if pid_file.exists():
            run(["doveadm", "-c", str(self.dovecot_conf), "stop"], check=False)
            deadline = time.monotonic() + 10
            while pid_file.exists() and time.monotonic() < deadline:
                time.sleep(0.1)

    def start_milter(self, config: Path, path_map: dict[str, str]) -> None:
        """ExecStartPre= then ExecStart= of the unit, both in the unit's sandbox."""
        unit = unit_settings()
        pre = unit["ExecStartPre"].split()
        start = unit["ExecStart"].split()
        assert pre[0] == start[0] == "/opt/postwarden/bin/postwarden"
        run(sandboxed([pre[0], "--config", str(config), *pre[1:]], path_map))
        log = (self.root / "milter.log").open("ab")
        self.milter_proc = subprocess.Popen(
            sandboxed([start[0], "--config", str(config), *start[1:]], path_map),
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        socket = self.queue_dir / "postwarden" / "postwarden.sock"
        deadline = time.monotonic() + 30
        while not socket.exists():
            if self.milter_proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError((self.root / "milter.log").read_text()[-3000:])
            time.sleep(0.1)

    def stop_milter(self) -> int | None:
        proc = self.milter_proc
        if proc is None or proc.poll() is not None:
            return proc.returncode if proc else None
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(45)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            return proc.wait()

    def logs(self) -> str:
        """The ends of the milter's log and Postfix's, for a failing assertion."""
        milter = (self.root / "milter.log").read_text(errors="replace")[-3000:]
        maillog = self.sandbox.maillog.read_text(errors="replace")[-3000:]
        return f"--- milter.log\n{milter}\n--- maillog\n{maillog}"

    def _sink_files(self) -> list[bytes]:
        return [p.read_bytes() for p in sorted(self.sandbox.sink_dir.iterdir()) if p.is_file()]

    def sink_message(self, queue_id: str) -> bytes:
        assert self.sandbox.wait_for(lambda: queue_id in self.sandbox.sink_queue_ids(), 30)
        for raw in self._sink_files():
            for received in message_from_bytes(raw).get_all("Received", []):
                if f"id {queue_id}" in str(received):
                    return raw
        raise AssertionError(f"{queue_id} not in the sink")

    def sink_subject(self, subject: str) -> bytes | None:
        for raw in self._sink_files():
            if str(message_from_bytes(raw).get("Subject", "")).startswith(subject):
                return raw
        return None

    def stop(self) -> None:
        self.sandbox.stop_postfix()
        self.stop_milter()
        self.stop_dovecot()
        if self.sandbox.sink_proc:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.sandbox.sink_proc.pid, signal.SIGTERM)
            self.sandbox.sink_proc.wait(10)
