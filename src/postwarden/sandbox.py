"""A private Postfix instance on 127.0.0.1 with postwarden on both milter lists and a local
sink: what `postwarden demo` runs and what the end-to-end tests drive.

Never the system instance's queue, never ports 25 or 587. Facts it relies on are in
../shared/notes/postfix-sandbox.md: the default /etc/postfix/main.cf must exist and list this
instance in alternate_config_directories; with no syslog, Postfix logs to maillog_file.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from pathlib import Path

DEFAULT_MAIN_CF = Path("/etc/postfix/main.cf")
DEBIAN_MAIN_CF = Path("/usr/share/postfix/main.cf.debian")
SYSTEM_MASTER_CF = Path("/etc/postfix/master.cf")


def smtp_sink(dump_dir: str | Path, port: int) -> subprocess.Popen[bytes]:
    """Postfix's smtp-sink on 127.0.0.1:port, writing each message to dump_dir as %M."""
    return subprocess.Popen(
        ["smtp-sink", "-u", "postfix", "-d", f"{dump_dir}/%M.", f"127.0.0.1:{port}", "100"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


class SandboxError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=False, **kw)  # type: ignore[call-overload,no-any-return]


def _postconf_list(value: str) -> list[str]:
    return [v for v in re.split(r"[\s,]+", value) if v]


@dataclass
class SmtpResult:
    code: int
    text: str
    stage: str  # where the transaction ended: "connect", "mail", "rcpt", "data"

    @property
    def queue_id(self) -> str:
        m = re.search(r"queued as ([0-9A-Za-z]+)", self.text)
        return m.group(1) if m else ""


@dataclass
class Sandbox:
    root: Path
    smtp_port: int = 0
    sink_port: int = 0
    myhostname: str = "mail.sandbox.test"
    python: str = sys.executable
    milter_proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    sink_proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.root = self.root.resolve()
        self.smtp_port = self.smtp_port or free_port()
        self.sink_port = self.sink_port or free_port()

    # ---- paths ---------------------------------------------------------------------------------
    @property
    def conf_dir(self) -> Path:
        return self.root / "postfix"

    @property
    def queue_dir(self) -> Path:
        return self.root / "queue"

    @property
    def sink_dir(self) -> Path:
        return self.root / "sink"

    @property
    def maillog(self) -> Path:
        return self.root / "maillog"

    @property
    def milter_log(self) -> Path:
        return self.root / "postwarden.log"

    @property
    def socket_path(self) -> Path:
        return self.queue_dir / "postwarden" / "postwarden.sock"

    @property
    def milter_socket(self) -> str:
        return f"unix:{self.socket_path}"

    @property
    def state_file(self) -> Path:
        return self.root / "sandbox.json"

    # ---- set-up --------------------------------------------------------------------------------
    def _register_alternate(self) -> None:
        """The postfix command reads the default main.cf even with -c: it must exist and name
        this instance in alternate_config_directories."""
        if not DEFAULT_MAIN_CF.exists():
            shutil.copy(DEBIAN_MAIN_CF, DEFAULT_MAIN_CF)
        current = _postconf_list(_run(["postconf", "-h", "alternate_config_directories"]).stdout)
        keep = [d for d in current if Path(d).is_dir()]
        if str(self.conf_dir) not in keep:
            keep.append(str(self.conf_dir))
        if keep != current:
            _run(["postconf", "-e", f"alternate_config_directories = {' '.join(keep)}"])

    def configure(self, *, extra_main: dict[str, str] | None = None) -> None:
        for d in (self.root, self.conf_dir, self.queue_dir, self.sink_dir, self.root / "data"):
            d.mkdir(parents=True, exist_ok=True)
        # The postfix user must be able to reach the queue and the sink.
        self.root.chmod(0o755)
        postfix_user = pwd.getpwnam("postfix")
        for d in (self.sink_dir, self.root / "data"):
            os.chown(d, postfix_user.pw_uid, postfix_user.pw_gid)
        for old in self.sink_dir.iterdir():  # a fresh run starts with an empty sink
            if old.is_file():
                old.unlink()
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        self.socket_path.parent.chmod(0o755)
        shutil.copy(DEBIAN_MAIN_CF, self.conf_dir / "main.cf")
        shutil.copy(SYSTEM_MASTER_CF, self.conf_dir / "master.cf")
        settings = {
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.root / "data"),
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mydestination": "",
            "myhostname": self.myhostname,
            "myorigin": self.myhostname,
            "relayhost": f"[127.0.0.1]:{self.sink_port}",
            "mynetworks": "127.0.0.0/8",
            "compatibility_level": "3.6",
            "smtp_tls_security_level": "none",
            "smtpd_tls_security_level": "none",
            "smtp_dns_support_level": "disabled",
            "alias_maps": "",
            "alias_database": "",
            "smtpd_authorized_xclient_hosts": "127.0.0.1",
            "maillog_file": str(self.maillog),
            "maillog_file_prefixes": str(self.root),
            "in_flow_delay": "0",
            # Clients here are on 127.0.0.1; like a real submission client, let them get no
            # missing-header repair from Postfix, so postwarden's [headers].add_missing shows.
            "local_header_rewrite_clients": "",
            # What deploy/postfix/main.cf.snippet sets, so the tests run the shipped settings.
            **deploy_main_settings(self.milter_socket),
            **(extra_main or {}),
        }
        _run(
            [
                "postconf",
                "-c",
                str(self.conf_dir),
                "-e",
                *[f"{k} = {v}" for k, v in settings.items()],
            ]
        )
        m = ["postconf", "-c", str(self.conf_dir)]
        _run([*m, "-M#", "smtp/inet"])
        _run([*m, "-M#", "submission/inet"])
        _run(
            [
                *m,
                "-M",
                f"127.0.0.1:{self.smtp_port}/inet = 127.0.0.1:{self.smtp_port} inet n - n - - smtpd",
            ]
        )
        # A private instance has no chroot jail set up; pickup looks in maildrop every 10 s.
        _run([*m, "-F", "*/*/chroot = n"])
        _run([*m, "-F", "pickup/unix/wakeup = 10"])
        self._register_alternate()

    # ---- processes -----------------------------------------------------------------------------
    def start_sink(self) -> None:
        self.sink_proc = smtp_sink(self.sink_dir, self.sink_port)
        self._wait_port(self.sink_port, "smtp-sink")

    def start_postfix(self) -> None:
        # With no syslog, `postfix start` prints its fatal errors only to a terminal: give it one.
        res = _run(["script", "-qec", f"postfix -c {self.conf_dir} start", "/dev/null"])
        if res.returncode != 0:
            raise SandboxError(f"postfix did not start:\n{res.stdout}{res.stderr}")
        self._wait_port(self.smtp_port, "postfix smtpd")

    def stop_postfix(self) -> None:
        _run(["postfix", "-c", str(self.conf_dir), "stop"])
        deadline = time.monotonic() + 15
        pid_file = self.queue_dir / "pid" / "master.pid"
        while time.monotonic() < deadline and _pid_alive(_read_pid(pid_file)):
            time.sleep(0.2)
        if _pid_alive(_read_pid(pid_file)):
            _run(["postfix", "-c", str(self.conf_dir), "abort"])

    def start_milter(self, config: Path, *, log_mode: str = "ab") -> subprocess.Popen[bytes]:
        log = self.milter_log.open(log_mode)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        self.milter_proc = subprocess.Popen(
            [self.python, "-m", "postwarden", "--config", str(config), "milter"],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        deadline = time.monotonic() + 20
        while not self.socket_path.exists():
            if self.milter_proc.poll() is not None:
                raise SandboxError(
                    f"postwarden exited with {self.milter_proc.returncode}:\n{self.milter_log.read_text()[-3000:]}"
                )
            if time.monotonic() > deadline:
                raise SandboxError("postwarden did not open its socket within 20 s")
            time.sleep(0.05)
        return self.milter_proc

    def stop_milter(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        proc = self.milter_proc
        if proc is None or proc.poll() is not None:
            return proc.returncode if proc else None
        proc.send_signal(sig)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    def save_state(self) -> None:
        self.state_file.write_text(
            json.dumps(
                {
                    "smtp_port": self.smtp_port,
                    "sink_port": self.sink_port,
                    "milter_pid": self.milter_proc.pid if self.milter_proc else None,
                    "sink_pid": self.sink_proc.pid if self.sink_proc else None,
                }
            )
        )

    def stop_all(self) -> list[str]:
        """Stop Postfix, the milter and the sink, also when started by another process."""
        stopped = []
        state = json.loads(self.state_file.read_text()) if self.state_file.exists() else {}
        if (self.queue_dir / "pid" / "master.pid").exists() and _pid_alive(
            _read_pid(self.queue_dir / "pid" / "master.pid")
        ):
            self.stop_postfix()
            stopped.append("postfix")
        for name, proc, pid in (
            ("postwarden", self.milter_proc, state.get("milter_pid")),
            ("smtp-sink", self.sink_proc, state.get("sink_pid")),
        ):
            pid = proc.pid if proc else pid
            if pid and _pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
                if not _wait_gone(pid, 10):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    _wait_gone(pid, 5)
                stopped.append(name)
            if proc:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(1)
        self.state_file.unlink(missing_ok=True)
        return stopped

    def _wait_port(self, port: int, what: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not port_in_use(port):
            if time.monotonic() > deadline:
                raise SandboxError(
                    f"{what} is not listening on 127.0.0.1:{port}; see {self.maillog}"
                )
            time.sleep(0.05)

    # ---- traffic -------------------------------------------------------------------------------
    def smtp_send(
        self,
        message: bytes,
        mail_from: str,
        rcpts: list[str],
        *,
        login: str | None = None,
        timeout: float = 60,
    ) -> SmtpResult:
        """Send one message; with `login`, act as that SASL user through XCLIENT."""
        with smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=timeout) as s:
            refused = self._greet(s, login)
            if refused:
                return refused
            code, text = s.mail(mail_from)
            if code != 250:
                return SmtpResult(code, _text(text), "mail")
            for r in rcpts:
                code, text = s.rcpt(r)
                if code != 250:
                    return SmtpResult(code, _text(text), "rcpt")
            reply: bytes | str
            try:
                code, reply = s.data(message)
            except smtplib.SMTPDataError as exc:
                code, reply = exc.smtp_code, exc.smtp_error
            return SmtpResult(code, _text(reply), "data")

    @staticmethod
    def _greet(s: smtplib.SMTP, login: str | None) -> SmtpResult | None:
        """EHLO, and with `login` XCLIENT LOGIN= and EHLO again; the refusal, if any."""
        code, text = s.ehlo("client.sandbox.test")
        if code != 250:
            return SmtpResult(code, _text(text), "connect")
        if login:
            code, text = s.docmd("XCLIENT", f"LOGIN={login}")
            if code != 220:
                return SmtpResult(code, _text(text), "xclient")
            s.ehlo("client.sandbox.test")
        return None

    @contextlib.contextmanager
    def session(self, login: str | None = None, timeout: float = 60) -> Iterator[smtplib.SMTP]:
        """An SMTP session ready for MAIL FROM, as `login` when given (for tests that drive
        the conversation themselves)."""
        with smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=timeout) as s:
            refused = self._greet(s, login)
            if refused:
                raise SandboxError(
                    f"SMTP session refused at {refused.stage}: {refused.code} {refused.text}"
                )
            yield s

    def sendmail(
        self, message: bytes, mail_from: str, rcpts: list[str], *, user: str | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        """Submit through sendmail(1), the pickup path (non_smtpd_milters)."""
        cmd = ["/usr/sbin/sendmail", "-C", str(self.conf_dir), "-f", mail_from, "--", *rcpts]
        if user:
            cmd = ["runuser", "-u", user, "--", *cmd]
        return subprocess.run(cmd, input=message, capture_output=True, check=False)

    def kick_pickup(self) -> None:
        _run(["postkick", "-c", str(self.conf_dir), "public", "pickup", "W"])

    def queue(self) -> list[dict[str, object]]:
        res = _run(["postqueue", "-c", str(self.conf_dir), "-j"])
        return [json.loads(line) for line in res.stdout.splitlines() if line.strip()]

    def maildrop_count(self) -> int:
        d = self.queue_dir / "maildrop"
        return sum(1 for _ in d.iterdir()) if d.is_dir() else 0

    def sink_messages(self) -> list[Message]:
        out = []
        for path in sorted(self.sink_dir.iterdir()):
            if path.is_file():
                out.append(message_from_bytes(path.read_bytes()))
        return out

    def sink_queue_ids(self) -> list[str]:
        """The Postfix queue id of each delivered message, from Postfix's Received header."""
        ids = []
        for msg in self.sink_messages():
            for received in msg.get_all("Received", []):
                m = re.search(
                    r"\(Postfix[^)]*\)\s+(?:with\s+\S+\s+)?id\s+([0-9A-Za-z]+)", str(received)
                )
                if m:
                    ids.append(m.group(1))
                    break
        return ids

    def wait_for(self, predicate: object, timeout: float = 30, interval: float = 0.1) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():  # type: ignore[operator]
                return True
            time.sleep(interval)
        return bool(predicate())  # type: ignore[operator]


def _text(reply: bytes | str) -> str:
    return reply.decode(errors="replace") if isinstance(reply, bytes) else reply


def deploy_main_settings(milter_socket: str) -> dict[str, str]:
    """main.cf settings postwarden needs, read from deploy/postfix/main.cf.snippet when the
    source tree is at hand, so the tests run exactly what is shipped."""
    snippet = Path(__file__).resolve().parents[2] / "deploy" / "postfix" / "main.cf.snippet"
    text = snippet.read_text() if snippet.exists() else _EMBEDDED_MAIN_SNIPPET
    settings: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        settings[key.strip()] = value.strip()
    for key in ("smtpd_milters", "non_smtpd_milters"):
        settings[key] = milter_socket
    return settings


_EMBEDDED_MAIN_SNIPPET = """
smtpd_milters = unix:/postwarden/postwarden.sock
non_smtpd_milters = unix:/postwarden/postwarden.sock
milter_default_action = tempfail
milter_protocol = 6
milter_connect_macros = j {daemon_name} {daemon_addr} v _
milter_mail_macros = i {auth_type} {auth_authen} {auth_author} {mail_addr} {mail_host} {mail_mailer}
milter_end_of_data_macros = i
disable_mime_output_conversion = yes
message_reject_characters = \\0
smtputf8_autodetect_classes = verify
"""


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours still answers kill(0): look at its state.
    with contextlib.suppress(FileNotFoundError):
        if Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z"):
            return False
    return True


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return True
        time.sleep(0.1)
    return not _pid_alive(pid)
