"""The milter protocol (version 6, what Postfix speaks), served by postwarden on one thread.

Why not libmilter ([milter].transport = "libmilter" still runs it): libmilter gives every SMTP
connection a C thread, and each thread hands every callback to Python's one GIL. With 20
connections at once those hand-overs cost more than the work: measured side by side on one
Postfix (docs/benchmarks.md, "Transport"), decision time p99 fell from 77 ms to 5 ms and the
milter's CPU per message by 10-15 % when one asyncio thread ran every connection's callbacks.
A pure-Python thread per connection cost what libmilter did: the GIL hand-overs are the cost.

The callbacks are pymilter's own (Milter.Base: the decorators, negotiation, the byte
decoding): only the wire is spoken here. Each callback runs on the loop thread, one at a time.
The trade: a callback that waits holds every connection, not only its own. The waits are
bounded: eom's rate transaction waits for the decision writer's short commit, or for another
process holding the database's write lock (busy_timeout 10 s), or for Redis ([store].shared,
1 s socket timeouts); a full decision queue waits up to 2 s. Under libmilter those waits held
the outbound messages anyway (each needs the same lock or Redis), but inbound mail went on.

Only Postfix reaches the socket (group postfix, mode 0660), but a packet is still checked
before it is read: a length of 0 or over MAX_PACKET, a packet too short for its command, or a
command the protocol has not at that point closes that connection alone. Postfix then applies
milter_default_action (tempfail, as setup-postfix and the snippet set it). A connection silent
for IDLE_S (libmilter's default timeout, 7210 s) is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import re
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import Milter

log = logging.getLogger("postwarden")

VERSION = 6
# Postfix sends body chunks of up to 64 KiB and a header of up to header_size_limit (100 KiB by
# default); a packet over 1 MiB is not from Postfix.
MAX_PACKET = 1 << 20
REPLY_CHUNK = 65535  # a replaced body goes back in chunks libmilter's size
MAX_REPLY_LINE = 980  # libmilter's MAXREPLYLEN
# libmilter's own default I/O timeout. Postfix is silent on a milter connection while the
# client uploads DATA and between SMTP commands (smtpd_timeout, 300 s), so a connection is
# closed as idle only after this long ([milter].timeout is libmilter's under "libmilter").
IDLE_S = 7210
_REPLY_CODE = re.compile(r"[45][0-9][0-9]")
_XCODE = re.compile(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}")

# Return codes to reply packets (NOREPLY: nothing is sent).
_REPLY = {
    Milter.CONTINUE: b"c",
    Milter.ACCEPT: b"a",
    Milter.REJECT: b"r",
    Milter.TEMPFAIL: b"t",
    Milter.DISCARD: b"d",
    Milter.SKIP: b"s",
}
# Which macro set each command's macros ('D' names the command they come before) belong to,
# searched newest first by getsymval; a new MAIL FROM or an abort forgets the message's sets.
_MACRO_SET = {b"C": 0, b"H": 1, b"M": 2, b"R": 3, b"T": 4, b"L": 5, b"N": 5, b"B": 6, b"E": 6}
_MESSAGE_SETS = range(3, 7)
# Commands a connection may send before it has negotiated; commands only inside a message.
_BEFORE_NEGOTIATION = {b"O", b"Q"}
_IN_MESSAGE = {b"L", b"N", b"B", b"E"}


class ProtocolError(Exception):
    """A packet Postfix would not send: its connection is closed."""


def _packet(cmd: bytes, data: bytes = b"") -> bytes:
    return struct.pack("!I", len(data) + 1) + cmd + data


def _cstr(text: str) -> bytes:
    """A C string, as libmilter's calls take it: UTF-8, strictly, and no NUL inside."""
    if "\0" in text:
        raise ValueError("embedded null character")
    return text.encode("utf-8") + b"\0"


def _strings(data: bytes) -> list[bytes]:
    """NUL-terminated strings, the last terminator optional (libmilter's argv)."""
    parts = data.split(b"\0")
    if parts and parts[-1] == b"":
        parts.pop()
    return parts


class Context:
    """What Milter.Base calls as self._ctx: macros in, modifications and the reply out. Each
    call refuses what libmilter's smfi_* refuses, with Milter.error."""

    def __init__(self, actions: int) -> None:
        self.priv: Any = None
        self.actions = actions
        self.macros: list[dict[str, str]] = [{} for _ in range(7)]
        self.modifications: list[bytes] = []
        self.reply: bytes | None = None
        self.in_eom = False  # modifications are allowed only at end of message (mi_sendok)

    # ---- pymilter's milterContext, as Milter.Base uses it ----
    def setpriv(self, priv: Any) -> None:
        self.priv = priv

    def getpriv(self) -> Any:
        return self.priv

    def getsymval(self, name: str) -> str | None:
        key = name[1:-1] if name.startswith("{") and name.endswith("}") else name
        for found in reversed(self.macros):
            if key in found:
                return found[key]
        return None

    def setsymlist(self, stage: int, macros: bytes) -> None:
        return None  # not used: Postfix sends the macros main.cf names

    def setreply(
        self, rcode: str, xcode: str | None = None, msg: str | None = None, *ml: str
    ) -> None:
        """smfi_setreply / smfi_setmlreply's checks: a 4XX or 5XX code, an extended code of
        the same class, no CR or LF, no line over 980 characters."""
        if not _REPLY_CODE.fullmatch(rcode or ""):
            raise Milter.error("cannot set reply: not a 4XX or 5XX code")
        lines = [msg or "", *ml]
        if xcode is None and len(lines) > 1:
            xcode = f"{rcode[0]}.0.0"
        if xcode is not None and not (_XCODE.fullmatch(xcode) and xcode[0] == rcode[0]):
            raise Milter.error("cannot set reply: a bad extended code")
        if any("\r" in x or "\n" in x or len(x) > MAX_REPLY_LINE for x in lines):
            raise Milter.error("cannot set reply: CR, LF or a line too long")
        code = f"{rcode} {xcode}" if xcode else rcode
        if len(lines) == 1:
            text = f"{code} {lines[0]}" if lines[0] else code
        else:
            text = "\r\n".join(
                [f"{rcode}-{xcode} {x}" for x in lines[:-1]] + [f"{code} {lines[-1]}"]
            )
        self.reply = _cstr(text)

    def _modify(self, action: int, packet: bytes) -> None:
        if not self.in_eom:
            raise Milter.error("a modification outside end of message")
        if not self.actions & action:
            raise Milter.error("an action not negotiated")
        self.modifications.append(packet)

    def addheader(self, field: str, value: str, idx: int = -1) -> None:
        if not field:
            raise Milter.error("cannot add header: no name")
        if idx < 0:
            self._modify(Milter.ADDHDRS, _packet(b"h", _cstr(field) + _cstr(value)))
        else:
            packet = _packet(b"i", struct.pack("!I", idx) + _cstr(field) + _cstr(value))
            self._modify(Milter.ADDHDRS, packet)

    def chgheader(self, field: str, idx: int, value: str | None) -> None:
        if not field or idx < 0:
            raise Milter.error("cannot change header: no name, or a negative index")
        packet = _packet(b"m", struct.pack("!I", idx) + _cstr(field) + _cstr(value or ""))
        self._modify(Milter.CHGHDRS, packet)

    def quarantine(self, reason: str) -> None:
        if not reason:
            raise Milter.error("cannot quarantine: no reason")
        self._modify(Milter.QUARANTINE, _packet(b"q", _cstr(reason)))

    def replacebody(self, body: bytes) -> None:
        for start in range(0, len(body), REPLY_CHUNK):
            self._modify(Milter.CHGBODY, _packet(b"b", bytes(body[start : start + REPLY_CHUNK])))

    def delrcpt(self, rcpt: str) -> None:
        if not rcpt:
            raise Milter.error("cannot remove a recipient: none named")
        self._modify(Milter.DELRCPT, _packet(b"-", _cstr(rcpt)))

    def _not_offered(self, *args: Any) -> None:
        raise Milter.error("not offered by postwarden's transport (not negotiated)")

    addrcpt = chgfrom = progress = _not_offered


class Session:
    """One milter connection: packets in, reply packets out. No I/O here (tested alone)."""

    def __init__(self, factory: Callable[[], Any], actions: int) -> None:
        self.factory = factory
        self.ctx = Context(actions)
        self.milter: Any = None
        self.protocol = 0
        self.in_message = False  # between MAIL and end of message or abort

    def handle(self, cmd: bytes, data: bytes) -> list[bytes] | None:
        """The packets to send back ([] for none); None: the MTA has quit."""
        if self.milter is None and cmd not in _BEFORE_NEGOTIATION and cmd != b"D":
            raise ProtocolError(f"command {cmd!r} before negotiation")
        handler = _HANDLERS.get(cmd)
        if handler is None:
            raise ProtocolError(f"unknown command {cmd!r}")
        if cmd in _IN_MESSAGE and not self.in_message:
            raise ProtocolError(f"command {cmd!r} outside a message")
        return handler(self, data)

    def close(self) -> None:
        """The connection's end: a message still open is aborted first, as libmilter does."""
        milter, self.milter = self.milter, None
        if milter is not None:
            try:
                if self.in_message:
                    self.in_message = False
                    milter.abort()
                milter.close()
            finally:
                milter._setctx(None)

    # ---- the commands ----
    def _answer(self, rc: int) -> list[bytes]:
        reply, self.ctx.reply = self.ctx.reply, None
        if rc == Milter.NOREPLY:
            return []
        # libmilter sends the text set only with the answer of its class: a 5XX text with a
        # tempfail would otherwise turn it into a rejection.
        if reply is not None and (rc, reply[:1]) in (
            (Milter.REJECT, b"5"),
            (Milter.TEMPFAIL, b"4"),
        ):
            return [_packet(b"y", reply)]
        return [_packet(_REPLY.get(rc, b"t"))]

    def _negotiate(self, data: bytes) -> list[bytes] | None:
        if len(data) < 12:
            raise ProtocolError("short OPTNEG")
        version, mta_actions, mta_protocol = struct.unpack("!III", data[:12])
        if version < 2:
            raise ProtocolError(f"milter protocol version {version}")
        self.close()
        self.ctx.actions &= mta_actions
        self._new_milter()
        opts = [self.ctx.actions, mta_protocol, 0, 0]
        if self.milter.negotiate(opts) != Milter.CONTINUE:
            opts[1] = 0
        self.protocol = self.milter._protocol = opts[1] & mta_protocol
        # The MTA's own version when older (Postfix's milter_protocol): it refuses a newer one.
        body = struct.pack("!III", min(VERSION, version), self.ctx.actions, self.protocol)
        return [_packet(b"O", body)]

    def _new_milter(self) -> None:
        milter = self.factory()
        milter._setctx(self.ctx)
        milter._protocol = self.protocol
        milter._actions = self.ctx.actions
        self.milter = milter

    def _macros(self, data: bytes) -> list[bytes]:
        if not data:
            raise ProtocolError("empty macro packet")
        found = self.ctx.macros[_MACRO_SET.get(data[:1], 6)]
        found.clear()
        parts = _strings(data[1:])
        for name, value in zip(parts[::2], parts[1::2], strict=False):
            key = name.decode("ascii", "replace")
            if key.startswith("{") and key.endswith("}"):
                key = key[1:-1]
            found[key] = value.decode("utf-8", "surrogateescape")
        return []

    def _connect(self, data: bytes) -> list[bytes]:
        host, sep, rest = data.partition(b"\0")
        if not sep or not rest:
            raise ProtocolError("short CONNECT")
        family, hostaddr = _address(rest)
        name = host.decode("utf-8", "surrogateescape")
        return self._answer(self.milter.connect(name, family, hostaddr))

    def _helo(self, data: bytes) -> list[bytes]:
        return self._answer(
            self.milter.hello(data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape"))
        )

    def _mail(self, data: bytes) -> list[bytes]:
        args = _strings(data)
        if not args:
            raise ProtocolError("MAIL without a sender")
        for n in _MESSAGE_SETS:
            self.ctx.macros[n].clear()
        self.in_message = True
        return self._answer(self.milter.envfrom_bytes(*args))

    def _rcpt(self, data: bytes) -> list[bytes]:
        args = _strings(data)
        if not args:
            raise ProtocolError("RCPT without a recipient")
        return self._answer(self.milter.envrcpt_bytes(*args))

    def _data(self, data: bytes) -> list[bytes]:
        return self._answer(self.milter.data())

    def _header(self, data: bytes) -> list[bytes]:
        name, sep, rest = data.partition(b"\0")
        if not sep:
            raise ProtocolError("HEADER without a value")
        value = rest.split(b"\0", 1)[0]  # libmilter's C string ends at the first NUL
        return self._answer(
            self.milter.header_bytes(name.decode("utf-8", "surrogateescape"), value)
        )

    def _eoh(self, data: bytes) -> list[bytes]:
        return self._answer(self.milter.eoh())

    def _body(self, data: bytes) -> list[bytes]:
        return self._answer(self.milter.body(data))

    def _eom(self, data: bytes) -> list[bytes]:
        if data:
            self.milter.body(data)
        self.ctx.modifications = []
        self.in_message = False
        self.ctx.in_eom = True
        try:
            rc = self.milter.eom()
        finally:
            self.ctx.in_eom = False
        modifications, self.ctx.modifications = self.ctx.modifications, []
        # End of message is always answered (no NOREPLY for it in the protocol).
        return modifications + self._answer(Milter.CONTINUE if rc == Milter.NOREPLY else rc)

    def _abort(self, data: bytes) -> list[bytes]:
        self.in_message = False
        self.milter.abort()
        for n in range(2, 7):
            self.ctx.macros[n].clear()
        self.ctx.reply = None
        return []

    def _unknown(self, data: bytes) -> list[bytes]:
        return self._answer(self.milter.unknown(data.split(b"\0", 1)[0].decode("utf-8", "replace")))

    def _quit(self, data: bytes) -> None:
        return None

    def _quit_new_connection(self, data: bytes) -> list[bytes]:
        # Another SMTP connection follows on this milter connection, without a new OPTNEG.
        self.close()
        self.ctx.macros = [{} for _ in range(7)]
        self.ctx.reply = None
        self._new_milter()
        return []


_HANDLERS: dict[bytes, Callable[[Session, bytes], list[bytes] | None]] = {
    b"O": Session._negotiate,
    b"D": Session._macros,
    b"C": Session._connect,
    b"H": Session._helo,
    b"M": Session._mail,
    b"R": Session._rcpt,
    b"T": Session._data,
    b"L": Session._header,
    b"N": Session._eoh,
    b"B": Session._body,
    b"E": Session._eom,
    b"A": Session._abort,
    b"U": Session._unknown,
    b"Q": Session._quit,
    b"K": Session._quit_new_connection,
}


def _address(rest: bytes) -> tuple[int, Any]:
    """CONNECT's family, port and address, as pymilter passes them to connect()."""
    kind = rest[:1]
    if kind == b"U":
        return 0, None
    if len(rest) < 3:
        raise ProtocolError("short CONNECT address")
    port = struct.unpack("!H", rest[1:3])[0]
    text = rest[3:].split(b"\0", 1)[0].decode("ascii", "replace")
    if kind == b"L":
        return socket.AF_UNIX, text
    if kind in (b"4", b"6"):
        try:
            ip = ipaddress.ip_address(text.removeprefix("IPv6:"))
        except ValueError:
            raise ProtocolError(f"CONNECT address {text!r}") from None
        if kind == b"4":
            return socket.AF_INET, (str(ip), port)
        return socket.AF_INET6, (str(ip), port, 0, 0)
    raise ProtocolError(f"CONNECT family {kind!r}")


class _Connection(asyncio.Protocol):
    def __init__(self, server: Server) -> None:
        self.server = server
        self.session = Session(server.factory, server.actions)
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.last = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server.connections.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # Each reply is one small write the MTA waits for: Nagle and a delayed ACK cost
            # ~40 ms a message over inet (libmilter's, which sets no TCP_NODELAY).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.last = time.monotonic()
        buf = self.buffer
        buf += data
        out: list[bytes] = []
        try:
            while len(buf) >= 4:
                (size,) = struct.unpack_from("!I", buf)
                if size == 0 or size > MAX_PACKET:
                    raise ProtocolError(f"packet of {size} bytes")
                if len(buf) < 4 + size:
                    break
                cmd = bytes(buf[4:5])
                with memoryview(buf) as view:
                    payload = bytes(view[5 : 4 + size])  # one copy of a 64 KiB chunk, not two
                del buf[: 4 + size]
                answer = self.session.handle(cmd, payload)
                if answer is None:
                    self._close(out)
                    return
                out.extend(answer)
        except ProtocolError as exc:
            log.error("milter connection closed: %s", exc)
            self._close(out)
            return
        except Exception:  # the boundary: this connection alone, tempfailed by Postfix
            log.exception("milter connection closed after a failure")
            self._close(out)
            return
        if out and self.transport is not None:
            self.transport.write(b"".join(out))

    def _close(self, out: list[bytes]) -> None:
        if self.transport is not None:
            if out:
                self.transport.write(b"".join(out))
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        try:
            self.session.close()
        except Exception:  # a close callback's failure ends nothing else
            log.exception("milter close failed")


class Server:
    """Serves the socket bound ("unix:/path" or "inet:PORT@HOST") on a thread of its own."""

    def __init__(self, factory: Callable[[], Any], actions: int, idle: float = IDLE_S) -> None:
        self.factory = factory
        self.actions = actions
        self.idle = idle
        self.connections: set[_Connection] = set()
        self.listener: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped = threading.Event()
        self._stopping: asyncio.Event | None = None
        self._stop_requested = False

    def bind(self, spec: str) -> None:
        """Bind `spec` and listen (a unix socket with mode 0660 at most; the daemon binds it
        under a temporary name and renames it into place, milter/daemon.py's _temporary)."""
        if spec.startswith("unix:"):
            path = spec[5:]
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            old_umask = os.umask(0o117)
            try:
                listener.bind(path)
            finally:
                os.umask(old_umask)
        else:
            kind, _, rest = spec.partition(":")
            port, _, host = rest.partition("@")
            family = socket.AF_INET6 if kind == "inet6" else socket.AF_INET
            info = socket.getaddrinfo(host, int(port), family, socket.SOCK_STREAM)[0]
            listener = socket.socket(info[0], socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(info[4])
        listener.listen(128)
        listener.setblocking(False)
        self.listener = listener

    def serve(self) -> None:
        try:
            asyncio.run(self._serve())
        finally:
            self._stopped.set()

    async def _serve(self) -> None:
        assert self.listener is not None
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stopping = asyncio.Event()
        if self._stop_requested:
            return
        server = await loop.create_server(lambda: _Connection(self), sock=self.listener)
        sweeper = asyncio.ensure_future(self._sweep())
        try:
            await self._stopping.wait()
        finally:
            sweeper.cancel()
            server.close()
            for conn in list(self.connections):
                if conn.transport is not None:
                    conn.transport.abort()
            await server.wait_closed()

    async def _sweep(self) -> None:
        """A connection silent for `idle` seconds is closed (aborted: a peer that no longer
        reads would keep a graceful close waiting for ever)."""
        while True:
            await asyncio.sleep(1)
            edge = time.monotonic() - self.idle
            for conn in list(self.connections):
                if conn.last < edge and conn.transport is not None:
                    log.info("milter connection idle for %d s: closed", self.idle)
                    conn.transport.abort()

    def stop(self) -> None:
        """From any thread: stop accepting, close every connection, end serve()."""
        self._stop_requested = True
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already ended
                loop.call_soon_threadsafe(stopping.set)

    def wait(self, timeout: float) -> bool:
        return self._stopped.wait(timeout)
