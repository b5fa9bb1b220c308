"""A private Postfix set up as deploy/postfix/streams.* says, with two sinks: the default one
(transactional mail, through "smtp") and a second one behind the smtp-bulk transport (its own
bind address and HELO name), for the streams, pacing and warm-up tests."""

from __future__ import annotations

import os
import pwd
import re
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email import message_from_bytes
from email.message import Message
from pathlib import Path

from postwarden.config import load_config
from postwarden.sandbox import free_port, smtp_sink
from tests.dkim_verify import dkimpy_results, records_for
from tests.e2e.conftest import Stack, module_stack
from tests.helpers import REPO, write_key

DEPLOY = REPO / "deploy" / "postfix"
BULK_HELO = "bulk.sandbox.test"
BULK_BIND = "127.0.0.2"

STREAMS_POLICY = """
[domains."news.example.com"]
keys = [{ selector = "news2026", file = "keys/news.example.com/news2026.key" }]

[users."alice@example.com"]
send_as = ["alice@example.com", "*@news.example.com"]
"""

BULK = (
    "List-Unsubscribe: <https://news.example.com/u/1>\r\n"
    "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\nPrecedence: bulk\r\n"
)


@dataclass
class BulkSink:
    dir: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None

    def files(self) -> list[Path]:
        return sorted(p for p in self.dir.iterdir() if p.is_file())

    def messages(self) -> list[Message]:
        return [message_from_bytes(p.read_bytes()) for p in self.files()]


def sink_files(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_file())


def configure_streams(stack: Stack, bulk_port: int) -> None:
    """Apply deploy/postfix/streams.main.cf, its two regexp files and streams.master.cf to the
    sandbox: the shipped lines, with this sandbox's paths, addresses and sink."""
    sb = stack.sandbox
    conf = str(sb.conf_dir)
    for name in ("postwarden_stream_filter", "postwarden_stream_strip"):
        text = (DEPLOY / name).read_text()
        # The sandbox relays everything to its sinks: name the bulk sink as the FILTER next
        # hop, as the file says to with a relayhost.
        text = text.replace("FILTER smtp-bulk:\n", f"FILTER smtp-bulk:[127.0.0.1]:{bulk_port}\n")
        (sb.conf_dir / name).write_text(text)
    settings = []
    for line in (DEPLOY / "streams.main.cf").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            settings.append(line.replace("/etc/postfix/", conf + "/"))
    subprocess.run(["postconf", "-c", conf, "-e", *settings], check=True)
    lines = [ln for ln in (DEPLOY / "streams.master.cf").read_text().splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith("#")]
    fields = lines[0].split()
    assert fields[:2] == ["smtp-bulk", "unix"], lines[0]
    fields[4] = "n"  # no chroot in the sandbox
    subprocess.run(
        ["postconf", "-c", conf, "-M", f"smtp-bulk/unix = {' '.join(fields)}"], check=True
    )
    for opt in lines[1:]:
        key, _, value = opt.strip().removeprefix("-o ").partition("=")
        value = {"smtp_bind_address": BULK_BIND, "smtp_helo_name": BULK_HELO}.get(key, value)
        subprocess.run(["postconf", "-c", conf, "-P", f"smtp-bulk/unix/{key}={value}"], check=True)


# Caps far above what the pacing tests send: they are about the pace, not the rate caps.
WIDE_CAPS = {
    'messages = ["30/minute", "500/hour", "2000/day"]': 'messages = ["5000/minute"]',
    'recipients = ["200/minute", "5000/day"]': 'recipients = ["5000/minute"]',
}


def streams_stack(
    name: str,
    extra_policy: str = "",
    demo_edits: dict[str, str] | None = None,
    start: Callable[[Stack], None] | None = None,
) -> Iterator[tuple[Stack, BulkSink]]:
    """start: how to start the stack (default Stack.start: the milter as root)."""
    for s in module_stack(name, STREAMS_POLICY + extra_policy):
        policies = s.config.parent / "policies"
        demo = policies / "10-demo.toml"
        text = demo.read_text().replace(
            '[domains."example.com"]\n',
            '[domains."example.com"]\nstreams = { bulk = "news.example.com" }\n',
            1,
        )
        for old, new in (demo_edits or {}).items():
            assert old in text, old
            text = text.replace(old, new)
        demo.write_text(text)
        write_key(policies / "keys/news.example.com/news2026.key")
        s.allow_local("app", ["news@news.example.com", "app@example.com"])
        bulk = BulkSink(s.root / "sink-bulk", free_port())
        bulk.dir.mkdir(parents=True, exist_ok=True)
        pw = pwd.getpwnam("postfix")
        os.chown(bulk.dir, pw.pw_uid, pw.pw_gid)
        configure_streams(s, bulk.port)
        (start or Stack.start)(s)
        bulk.proc = smtp_sink(bulk.dir, bulk.port)
        s.sandbox._wait_port(bulk.port, "bulk smtp-sink")
        try:
            yield s, bulk
        finally:
            if bulk.proc is not None:
                bulk.proc.terminate()
                bulk.proc.wait(10)


def verify_all(stack: Stack, raw: bytes) -> list[bool]:
    keys = [k for ks in load_config(stack.config).keys.values() for k in ks]
    return dkimpy_results(raw, records_for(keys))


def helo_of(msg: Message) -> str:
    return re.sub(r"^(EHLO|HELO)\s+", "", str(msg.get("X-Helo-Args", "")).strip())
