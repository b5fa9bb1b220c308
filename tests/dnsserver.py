"""A real DNS server on loopback for the tests: dnslib, answering from zone-file text.

Names in `servfail` get SERVFAIL; names in `silent` get no answer at all (a timeout); every
answer can be delayed, as a slow resolver would."""

from __future__ import annotations

import time
from collections.abc import Iterable

from dnslib import QTYPE, RCODE, RR
from dnslib.server import BaseResolver, DNSLogger, DNSServer

from postwarden.sandbox import free_port


class ZoneResolver(BaseResolver):  # type: ignore[misc]
    def __init__(
        self,
        zone: str,
        delay: float = 0.0,
        servfail: Iterable[str] = (),
        silent: Iterable[str] = (),
    ) -> None:
        self.rrs = RR.fromZone(zone)
        self.names = {str(rr.rname).lower() for rr in self.rrs}
        self.delay = delay
        self.servfail = {n.lower().rstrip(".") + "." for n in servfail}
        self.silent = {n.lower().rstrip(".") + "." for n in silent}

    def resolve(self, request, handler):  # type: ignore[no-untyped-def]
        if self.delay:
            time.sleep(self.delay)
        reply = request.reply()
        qname = str(request.q.qname).lower()
        if any(qname == s or qname.endswith("." + s) for s in self.silent):
            time.sleep(30)  # the client gives up first
            return reply
        if any(qname == s or qname.endswith("." + s) for s in self.servfail):
            reply.header.rcode = RCODE.SERVFAIL
            return reply
        qtype = QTYPE[request.q.qtype]
        found = [
            rr for rr in self.rrs if str(rr.rname).lower() == qname and QTYPE[rr.rtype] == qtype
        ]
        for rr in found:
            reply.add_answer(rr)
        if not found and qname not in self.names:
            reply.header.rcode = RCODE.NXDOMAIN
        return reply


class LoopbackDNS:
    def __init__(self, zone: str, **kw: object) -> None:
        self.port = free_port()
        resolver = ZoneResolver(zone, **kw)  # type: ignore[arg-type]
        self.resolver = resolver  # a test may change the zone between two runs (set_zone)
        quiet = DNSLogger(log="-request,-reply,-truncated,-error,-recv,-send,-data", prefix=False)
        self.servers = [
            DNSServer(resolver, port=self.port, address="127.0.0.1", logger=quiet),
            DNSServer(resolver, port=self.port, address="127.0.0.1", tcp=True, logger=quiet),
        ]

    def set_zone(self, zone: str) -> None:
        """Answer from `zone` from now on (a record that breaks between two runs)."""
        rrs = RR.fromZone(zone)
        self.resolver.names = {str(rr.rname).lower() for rr in rrs}
        self.resolver.rrs = rrs

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> LoopbackDNS:
        for s in self.servers:
            s.start_thread()
        return self

    def __exit__(self, *exc: object) -> None:
        for s in self.servers:
            s.stop()


def txt(name: str, value: str) -> str:
    """A TXT record line, the value split into strings of at most 255 characters."""
    chunks = " ".join(f'"{value[i : i + 255]}"' for i in range(0, len(value), 255)) or '""'
    return f"{name} 300 IN TXT {chunks}"
