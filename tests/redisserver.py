"""A private redis-server (Debian's) for the tests: on a free loopback port and a unix socket in
its own folder, with AOF on (the persistence the README recommends), stopped by the test."""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from postwarden.sandbox import free_port


class RedisServer:
    def __init__(self, root: Path, password: str = "") -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def socket_path(self) -> Path:
        return self.root / "redis.sock"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def unix_url(self) -> str:
        return f"unix://{self.socket_path}?db=0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is missing: run `make install` (Debian's redis-server)")
        cmd = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--unixsocket",
            str(self.socket_path),
            "--unixsocketperm",
            "770",
            "--dir",
            str(self.root),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--daemonize",
            "no",
            "--logfile",
            str(self.root / "redis.log"),
        ]
        if self.password:
            cmd += ["--requirepass", self.password]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + 20
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0 and self.socket_path.exists():
                    break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = (
                    (self.root / "redis.log").read_text()
                    if (self.root / "redis.log").exists()
                    else ""
                )
                raise RuntimeError(f"redis-server did not start on {self.port}:\n{log[-2000:]}")
            time.sleep(0.02)
        # Loading the AOF after a restart: wait until it answers.
        client = self.client()
        while True:
            try:
                client.ping()
                break
            except redis.BusyLoadingError:
                time.sleep(0.02)

    def client(self) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1", port=self.port, password=self.password or None, decode_responses=True
        )

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """SIGTERM: Redis flushes its AOF and exits; SIGKILL: a crash (AOF everysec)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()


@contextlib.contextmanager
def redis_server(root: Path, password: str = "") -> Iterator[RedisServer]:
    server = RedisServer(root, password)
    server.start()
    try:
        yield server
    finally:
        server.stop()
