"""milter/transport.py: the milter protocol spoken by postwarden, on a real socket.

The e2e tests run every message of theirs through it and a real Postfix (it is the default
transport); these drive it packet by packet, as Postfix would and as Postfix never would. What
each bad input gets is said per test: a packet Postfix would not send closes that connection
alone (Postfix then applies milter_default_action = tempfail); the server goes on serving.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import Milter
import pytest

from postwarden.milter import transport
from postwarden.milter.daemon import ACTIONS

ALL_ACTIONS = 0x1FF
# Every step and no-reply bit a version-6 MTA offers (Postfix 3.x offers these).
ALL_PROTOCOL = 0x1FFFFF


class Recorder(Milter.Base):  # type: ignore[misc]
    """A milter that records its callbacks and, at eom, does what `plan` says."""

    calls: list[tuple[Any, ...]] = []
    plan: list[tuple[Any, ...]] = []
    eom_rc = Milter.ACCEPT

    @Milter.noreply
    def connect(self, hostname: str, family: int, hostaddr: Any) -> int:
        self.calls.append(("connect", hostname, family, hostaddr, self.getsymval("{daemon_name}")))
        return Milter.CONTINUE

    @Milter.noreply
    def envfrom(self, mailfrom: str, *params: str) -> int:
        self.calls.append(("envfrom", mailfrom, params, self.getsymval("{auth_authen}")))
        return Milter.CONTINUE

    def envrcpt(self, rcpt: str, *params: str) -> int:
        self.calls.append(("envrcpt", rcpt))
        if rcpt == "<refused@example.net>":
            self.setreply("550", "5.7.1", "suppressed")
            return Milter.REJECT
        if rcpt == "<crash@example.net>":
            raise RuntimeError("a bug in a callback")
        return Milter.CONTINUE

    @Milter.noreply
    def header(self, name: str, value: str) -> int:
        self.calls.append(("header", name, value))
        return Milter.CONTINUE

    @Milter.noreply
    def body(self, chunk: bytes) -> int:
        self.calls.append(("body", len(chunk)))
        return Milter.CONTINUE

    def eom(self) -> int:
        self.calls.append(("eom", self.getsymval("i")))
        for step in self.plan:
            getattr(self, step[0])(*step[1:])
        return int(self.eom_rc)

    def abort(self) -> int:
        self.calls.append(("abort",))
        return Milter.CONTINUE

    def close(self) -> int:
        self.calls.append(("close",))
        return Milter.CONTINUE


def pkt(cmd: bytes, data: bytes = b"") -> bytes:
    return struct.pack("!I", len(data) + 1) + cmd + data


def optneg(actions: int = ALL_ACTIONS, protocol: int = ALL_PROTOCOL) -> bytes:
    return pkt(b"O", struct.pack("!III", 6, actions, protocol))


def connect_pkt(host: bytes = b"client.example", addr: bytes = b"192.0.2.7") -> bytes:
    return pkt(b"C", host + b"\0" + b"4" + struct.pack("!H", 2525) + addr + b"\0")


class Client:
    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(str(path))

    def send(self, *packets: bytes) -> None:
        self.sock.sendall(b"".join(packets))

    def read(self) -> tuple[bytes, bytes]:
        head = self._exact(4)
        (n,) = struct.unpack("!I", head)
        body = self._exact(n)
        return body[:1], body[1:]

    def _exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return buf

    def closed(self) -> bool:
        """True when the server closes the connection (after any packets still to read) within
        the socket's 5 s; False when it keeps it open."""
        try:
            while self.sock.recv(65536):
                pass
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
        return True

    def negotiate(self) -> tuple[int, int]:
        self.send(optneg())
        cmd, data = self.read()
        assert cmd == b"O"
        version, actions, protocol = struct.unpack("!III", data)
        assert version == 6
        return actions, protocol

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[transport.Server, Path]]:
    Recorder.calls = []
    Recorder.plan = []
    Recorder.eom_rc = Milter.ACCEPT
    path = tmp_path / "m.sock"
    server = transport.Server(Recorder, ACTIONS, idle=2)
    server.bind(f"unix:{path}")
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    yield server, path
    server.stop()
    assert server.wait(5), "the server did not stop"
    thread.join(5)


def a_message(c: Client) -> list[tuple[bytes, bytes]]:
    """One message with noreply negotiated: only RCPT and end-of-message are answered."""
    c.send(
        pkt(b"D", b"C" + b"{daemon_name}\0ORIGINATING\0"),
        connect_pkt(),
        pkt(b"D", b"M" + b"{auth_authen}\0alice\0"),
        pkt(b"M", b"<alice@example.com>\0SIZE=100\0"),
        pkt(b"R", b"<bob@example.net>\0"),
        pkt(b"L", b"From\0alice@example.com\0"),
        pkt(b"L", b"Subject\0hi\0"),
        pkt(b"B", b"hello\r\n"),
        pkt(b"D", b"E" + b"i\0ABC123\0"),
        pkt(b"E"),
    )
    answers = [c.read()]  # RCPT's
    while True:
        answers.append(c.read())
        if answers[-1][0] in (b"a", b"c", b"r", b"t", b"d", b"y"):
            return answers


def test_negotiation_offers_only_our_actions_and_asks_no_reply_where_pymilter_would(
    served: tuple[transport.Server, Path],
) -> None:
    c = Client(served[1])
    actions, protocol = c.negotiate()
    assert actions == ACTIONS
    # @noreply connect, envfrom, header and body; @nocallback data, unknown, eoh (Base's).
    for bit in ("P_NR_CONN", "P_NR_MAIL", "P_NR_HDR", "P_NR_BODY", "P_NODATA", "P_NOUNKNOWN"):
        assert protocol & getattr(Milter, bit), bit
    # envrcpt and eom are answered: RCPT can be refused.
    assert not protocol & Milter.P_NR_RCPT
    assert not protocol & Milter.P_RCPT_REJ
    c.close()


def test_a_message_gets_its_macros_callbacks_and_eom_modifications_in_order(
    served: tuple[transport.Server, Path],
) -> None:
    Recorder.plan = [
        ("chgheader", "Subject", 1, None),
        ("addheader", "DKIM-Signature", "v=1; d=example.com", 0),
        ("addheader", "X-Postwarden-Stream", "bulk"),
        ("quarantine", "held: rate"),
        ("replacebody", b"x" * 70000),
        ("delrcpt", "<bob@example.net>"),
    ]
    c = Client(served[1])
    c.negotiate()
    answers = a_message(c)
    assert answers[0] == (b"c", b"")
    cmds = [a[0] for a in answers[1:]]
    assert cmds == [b"m", b"i", b"h", b"q", b"b", b"b", b"-", b"a"]
    assert answers[1][1] == struct.pack("!I", 1) + b"Subject\0\0"
    assert answers[2][1] == struct.pack("!I", 0) + b"DKIM-Signature\0v=1; d=example.com\0"
    assert answers[3][1] == b"X-Postwarden-Stream\0bulk\0"
    assert len(answers[5][1]) + len(answers[6][1]) == 70000
    assert Recorder.calls[:3] == [
        ("connect", "client.example", socket.AF_INET, ("192.0.2.7", 2525), "ORIGINATING"),
        ("envfrom", "<alice@example.com>", ("SIZE=100",), "alice"),
        ("envrcpt", "<bob@example.net>"),
    ]
    assert ("eom", "ABC123") in Recorder.calls
    c.close()


def test_a_refused_recipient_gets_the_reply_text_and_the_next_message_forgets_its_macros(
    served: tuple[transport.Server, Path],
) -> None:
    c = Client(served[1])
    c.negotiate()
    c.send(connect_pkt(), pkt(b"D", b"M{auth_authen}\0alice\0"), pkt(b"M", b"<a@example.com>\0"))
    c.send(pkt(b"R", b"<refused@example.net>\0"))
    assert c.read() == (b"y", b"550 5.7.1 suppressed\0")
    c.send(pkt(b"A"), pkt(b"M", b"<b@example.com>\0"), pkt(b"R", b"<ok@example.net>\0"))
    assert c.read() == (b"c", b"")
    envfroms = [x for x in Recorder.calls if x[0] == "envfrom"]
    # The second MAIL came with no macros of its own: alice's login is not carried over.
    assert envfroms == [
        ("envfrom", "<a@example.com>", (), "alice"),
        ("envfrom", "<b@example.com>", (), None),
    ]
    assert ("abort",) in Recorder.calls
    c.close()


@pytest.mark.parametrize(
    ("what", "packets"),
    [
        ("a zero length", [b"\0\0\0\0"]),
        ("a length over 1 MiB", [struct.pack("!I", transport.MAX_PACKET + 1) + b"B"]),
        ("an unknown command", [optneg(), pkt(b"Z", b"x")]),
        ("a command before negotiation", [pkt(b"M", b"<a@example.com>\0")]),
        ("a short OPTNEG", [pkt(b"O", b"\0\0\0\6")]),
        ("protocol version 1", [pkt(b"O", struct.pack("!III", 1, 0, 0))]),
        ("a CONNECT with no family", [optneg(), pkt(b"C", b"host")]),
        ("a CONNECT whose address is no address", [optneg(), connect_pkt(addr=b"not-an-ip")]),
        ("a CONNECT of an unknown family", [optneg(), pkt(b"C", b"h\0X\0\0a\0")]),
        ("a MAIL without a sender", [optneg(), connect_pkt(), pkt(b"M")]),
        (
            "a HEADER without a value",
            [optneg(), connect_pkt(), pkt(b"M", b"<a@x>\0"), pkt(b"L", b"From")],
        ),
        ("a macro packet with nothing in it", [optneg(), pkt(b"D")]),
        (
            "a callback that raises",
            [optneg(), connect_pkt(), pkt(b"M", b"<a@x>\0"), pkt(b"R", b"<crash@example.net>\0")],
        ),
    ],
)
def test_a_bad_packet_closes_its_connection_alone_and_the_server_goes_on(
    served: tuple[transport.Server, Path], what: str, packets: list[bytes]
) -> None:
    bad = Client(served[1])
    bad.send(*packets)
    assert bad.closed(), what
    bad.close()
    # The server still serves: a whole message on a new connection is answered.
    good = Client(served[1])
    good.negotiate()
    assert a_message(good)[-1] == (b"a", b"")
    good.close()


def test_a_packet_split_across_reads_is_read_whole(served: tuple[transport.Server, Path]) -> None:
    c = Client(served[1])
    whole = optneg()
    for i in range(len(whole)):
        c.send(whole[i : i + 1])
        time.sleep(0.001)
    assert c.read()[0] == b"O"
    c.close()


def test_quit_new_connection_closes_the_milter_and_starts_another_on_the_same_socket(
    served: tuple[transport.Server, Path],
) -> None:
    c = Client(served[1])
    c.negotiate()
    c.send(pkt(b"D", b"C{daemon_name}\0ORIGINATING\0"), connect_pkt(), pkt(b"K"))
    c.send(connect_pkt(b"second.example"))
    c.send(pkt(b"M", b"<a@example.com>\0"), pkt(b"R", b"<ok@example.net>\0"))
    assert c.read() == (b"c", b"")
    connects = [x for x in Recorder.calls if x[0] == "connect"]
    # The second connection starts with no macros of the first.
    assert connects[1] == ("connect", "second.example", socket.AF_INET, ("192.0.2.7", 2525), None)
    assert Recorder.calls.count(("close",)) == 1
    c.close()


def test_a_connection_silent_for_the_timeout_is_closed(
    served: tuple[transport.Server, Path],
) -> None:
    c = Client(served[1])
    c.negotiate()
    started = time.monotonic()
    assert c.closed()
    assert time.monotonic() - started < 5  # idle=2, swept each second
    c.close()


def test_stop_closes_open_connections_and_ends_serve(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    server = transport.Server(Recorder, ACTIONS)
    server.bind(f"unix:{path}")
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    c = Client(path)
    c.negotiate()
    server.stop()
    assert server.wait(5)
    assert c.closed()
    c.close()


def test_an_inet_socket_sets_no_delay(tmp_path: Path) -> None:
    """The spec's inet socket cost ~40 ms a message under libmilter (no TCP_NODELAY)."""
    server = transport.Server(Recorder, ACTIONS)
    server.bind("inet:0@127.0.0.1")
    assert server.listener is not None
    port = server.listener.getsockname()[1]
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(optneg())
            assert s.recv(64)[4:5] == b"O"
            conn = next(iter(server.connections))
            assert conn.transport is not None
            sock = conn.transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        server.stop()
        assert server.wait(5)


def test_context_refuses_what_libmilter_refuses() -> None:
    ctx = transport.Context(ACTIONS)
    with pytest.raises(Milter.error, match="outside end of message"):
        ctx.addheader("X-A", "a")
    ctx.in_eom = True
    with pytest.raises(ValueError, match="null"):
        ctx.addheader("X-A", "a\0b")
    with pytest.raises(UnicodeEncodeError):
        ctx.addheader("X-A", "\udcff")  # a surrogate-escaped byte: not UTF-8
    with pytest.raises(Milter.error):
        ctx.setreply("250", "2.0.0", "not a failure code")
    with pytest.raises(Milter.error):
        ctx.setreply("550", "4.7.1", "an extended code of another class")
    with pytest.raises(Milter.error):
        ctx.setreply("550", "bogus", "text")
    with pytest.raises(Milter.error):
        ctx.setreply("550", "5.7.1", "a\r\nInjected: header")
    with pytest.raises(Milter.error):
        ctx.setreply("550", "5.7.1", "x" * 981)
    with pytest.raises(Milter.error):
        ctx.chgheader("Subject", -1, None)
    with pytest.raises(Milter.error):
        ctx.quarantine("")
    with pytest.raises(Milter.error):
        ctx.addrcpt("<x@example.net>")
    ctx.setreply("451", "4.7.1", "one", "two")
    assert ctx.reply == b"451-4.7.1 one\r\n451 4.7.1 two\0"
    ctx.setreply("550", None, "one", "two")  # libmilter's default extended code
    assert ctx.reply == b"550-5.0.0 one\r\n550 5.0.0 two\0"
    only_headers = transport.Context(Milter.ADDHDRS)
    only_headers.in_eom = True
    with pytest.raises(Milter.error, match="not negotiated"):
        only_headers.quarantine("held")


def test_a_tempfail_never_carries_a_5xx_text(served: tuple[transport.Server, Path]) -> None:
    """A 5XX text set before a tempfail answer would make it a rejection: plain 't' is sent."""
    Recorder.plan = [("setreply", "550", "5.7.1", "refused")]
    Recorder.eom_rc = Milter.TEMPFAIL
    c = Client(served[1])
    c.negotiate()
    assert a_message(c)[-1] == (b"t", b"")
    Recorder.eom_rc = Milter.REJECT
    assert a_message(c)[-1] == (b"y", b"550 5.7.1 refused\0")
    c.close()


def test_an_older_mta_gets_its_own_protocol_version() -> None:
    session = transport.Session(Recorder, ACTIONS)
    answer = session.handle(b"O", struct.pack("!III", 4, ALL_ACTIONS, 0x7F))
    assert answer is not None
    version, _actions, protocol = struct.unpack("!III", answer[0][5:])
    assert version == 4
    assert protocol & ~0x7F == 0  # nothing the MTA did not offer


def test_a_connection_lost_inside_a_message_aborts_it_then_closes(
    served: tuple[transport.Server, Path],
) -> None:
    c = Client(served[1])
    c.negotiate()
    c.send(connect_pkt(), pkt(b"M", b"<a@example.com>\0"), pkt(b"R", b"<ok@example.net>\0"))
    assert c.read() == (b"c", b"")
    c.close()
    deadline = time.monotonic() + 5
    while ("close",) not in Recorder.calls and time.monotonic() < deadline:
        time.sleep(0.01)
    assert Recorder.calls[-2:] == [("abort",), ("close",)]


def test_end_of_message_outside_a_message_closes_the_connection(
    served: tuple[transport.Server, Path],
) -> None:
    c = Client(served[1])
    c.negotiate()
    c.send(connect_pkt(), pkt(b"E"))
    assert c.closed()
    assert not any(x[0] == "eom" for x in Recorder.calls)
    c.close()
