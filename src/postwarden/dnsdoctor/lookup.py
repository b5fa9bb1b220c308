"""DNS queries for the doctor, on dnspython, at [dns].nameservers: every answer is an answer,
empty, nonexistent, or unknown (a timeout or SERVFAIL is never taken for "no record")."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import dns.exception
import dns.name
import dns.resolver
import dns.reversename


@dataclass(frozen=True)
class Answer:
    values: tuple[str, ...] = ()
    status: str = "ok"  # ok | empty (NOERROR, no data) | nxdomain | unknown
    error: str = ""

    @property
    def void(self) -> bool:
        return self.status in ("empty", "nxdomain")


def make_resolver(nameservers: list[str], timeout: float) -> dns.resolver.Resolver:
    if not nameservers:
        resolver = dns.resolver.Resolver()
    else:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = []
        ports = set()
        for ns in nameservers:
            host, _, port = ns.rpartition(":") if ns.count(":") == 1 else (ns, "", "")
            resolver.nameservers.append(host)
            ports.add(int(port) if port else 53)
        resolver.port = ports.pop() if len(ports) == 1 else 53
    resolver.timeout = timeout
    resolver.lifetime = timeout
    return resolver


class Lookup:
    def __init__(self, resolver: dns.resolver.Resolver) -> None:
        self.resolver = resolver
        self.queries = 0
        self.unreachable = 0  # queries that reached no server at all
        self._lock = threading.Lock()

    def query(self, name: str, rdtype: str) -> Answer:
        with self._lock:
            self.queries += 1
        try:
            answer = self.resolver.resolve(name, rdtype, search=False)
        except dns.resolver.NXDOMAIN:
            return Answer(status="nxdomain")
        except dns.resolver.NoAnswer:
            return Answer(status="empty")
        except (
            dns.resolver.NoNameservers,
            dns.resolver.LifetimeTimeout,
            dns.exception.Timeout,
        ) as exc:
            with self._lock:
                if not isinstance(exc, dns.resolver.NoNameservers) or "SERVFAIL" not in str(exc):
                    self.unreachable += 1
            return Answer(status="unknown", error=f"{rdtype} {name}: {type(exc).__name__}")
        except (dns.name.LabelTooLong, dns.name.EmptyLabel, ValueError) as exc:
            return Answer(status="nxdomain", error=str(exc))
        values = []
        for rdata in answer:
            if rdtype == "TXT":
                values.append(b"".join(rdata.strings).decode("utf-8", "replace"))
            elif rdtype == "MX":
                values.append(str(rdata.exchange).rstrip("."))
            elif rdtype == "PTR":
                values.append(str(rdata.target).rstrip(".").lower())
            else:
                values.append(rdata.to_text())
        return Answer(tuple(values))

    def txt(self, name: str) -> Answer:
        return self.query(name, "TXT")

    def ptr(self, address: str) -> Answer:
        return self.query(str(dns.reversename.from_address(address)), "PTR")
