"""Typed models of postwarden.toml and the policy files (../shared/spec/config.md).

Every model forbids unknown keys, so a typo is an error that names the key rather than a
setting silently ignored. Defaults are the secure ones the spec shows.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

Action = Literal["reject", "tempfail", "quarantine", "accept"]

_RATE_RE = re.compile(r"^\s*([1-9][0-9]*)\s*/\s*(second|minute|hour|day)s?\s*$")
RATE_UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
_DOMAIN_RE = re.compile(
    r"^(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}$", re.IGNORECASE
)
_LOCAL_RE = re.compile(r"^[^\s@<>()\[\],;:\"]+$")


def parse_rate(text: str) -> tuple[int, int]:
    """ "30/minute" -> (30, 60): a count and a window in seconds."""
    m = _RATE_RE.match(text)
    if not m:
        raise ValueError(
            f'"{text}" is not a rate: write "N/unit", unit one of second, minute, hour, day'
        )
    return int(m.group(1)), RATE_UNITS[m.group(2)]


def _rate(text: str) -> str:
    parse_rate(text)
    return text


def is_domain(text: str) -> bool:
    return bool(_DOMAIN_RE.match(text))


def _domain(text: str) -> str:
    if not is_domain(text):
        raise ValueError(f'"{text}" is not a domain name')
    return text.lower()


def _address(text: str) -> str:
    local, sep, domain = text.rpartition("@")
    if not sep or not _LOCAL_RE.match(local) or not is_domain(domain):
        raise ValueError(f'"{text}" is not an address like user@example.com')
    return text


def _send_as(text: str) -> str:
    """An address, *@domain, *@*.domain or {login}."""
    if text == "{login}":
        return text
    local, sep, domain = text.rpartition("@")
    if sep and local == "*":
        if domain.startswith("*.") and is_domain(domain[2:]):
            return text.lower()
        if is_domain(domain):
            return text.lower()
    if sep and "*" not in text:
        return _address(text)
    raise ValueError(
        f'"{text}" is not a send_as pattern: use an address, *@domain, *@*.domain or {{login}}'
    )


def _local_send_as(text: str) -> str:
    """A [local] pattern: a send_as pattern, or "<>", the null sender (decisions.md)."""
    if text == "<>":
        return text
    if text == "{login}":
        raise ValueError('{login} means nothing for a local user: use an address or "<>"')
    return _send_as(text)


def _outbound(text: str) -> str:
    kind, _, arg = text.partition(":")
    if text in ("sasl", "local"):
        return text
    if kind == "daemon" and arg:
        return text
    if kind == "network" and arg:
        try:
            ipaddress.ip_network(arg, strict=False)
        except ValueError as exc:
            raise ValueError(f'"{arg}" is not a network: {exc}') from None
        return text
    raise ValueError(
        f'"{text}" is not an outbound rule: use "sasl", "local", "daemon:NAME" or "network:CIDR"'
    )


def _socket(text: str) -> str:
    if text.startswith("unix:") and len(text) > 5:
        return text
    m = re.match(r"^inet6?:(\d+)@\S+$", text)
    if m and 0 < int(m.group(1)) < 65536:
        return text
    raise ValueError(f'"{text}" is not a milter socket: use "unix:/path" or "inet:PORT@HOST"')


def _nameserver(text: str) -> str:
    host, _, port = text.rpartition(":") if text.count(":") == 1 else (text, "", "")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f'"{text}" is not a nameserver: write an IP address, optionally ":PORT"'
        ) from None
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f'"{text}" has a bad port')
    return text


def _ip(text: str) -> str:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f'"{text}" is not an IP address') from None
    return text


# ---- names compared without regard to case (issue 13): stored in lower case, so that a
# lookup of a lower-cased login or domain is exact.
def _lower(text: str) -> str:
    return text.lower()


Login = Annotated[str, AfterValidator(_lower)]
LowerName = Annotated[str, AfterValidator(_lower)]
# ----

RateSpec = Annotated[str, AfterValidator(_rate)]
DomainName = Annotated[str, AfterValidator(_domain)]
Address = Annotated[str, AfterValidator(_address)]
SendAs = Annotated[str, AfterValidator(_send_as)]
LocalSendAs = Annotated[str, AfterValidator(_local_send_as)]
OutboundRule = Annotated[str, AfterValidator(_outbound)]
MilterSocket = Annotated[str, AfterValidator(_socket)]
Nameserver = Annotated[str, AfterValidator(_nameserver)]
IPAddress = Annotated[str, AfterValidator(_ip)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


# ---- postwarden.toml -------------------------------------------------------------------------


class MilterSection(Strict):
    socket: MilterSocket = "unix:/var/spool/postfix/postwarden/postwarden.sock"
    timeout: int = Field(default=30, gt=0)
    on_error: Literal["tempfail", "accept"] = "tempfail"
    outbound: list[OutboundRule] = ["sasl", "local", "daemon:ORIGINATING"]
    # Added to the spec: where the daemon records its pid, for `postwarden reload`.
    pidfile: str = "/run/postwarden/postwarden.pid"
    # Added to the spec (deploy): the service user, owner of what root's commands create.
    user: str = Field(default="postwarden", pattern=r"^[a-z_][a-z0-9_-]*[$]?$")
    # Added to the spec (streams.md's releaser): "thread", the daemon releases paced and warm-up
    # holds itself (it must run as root or Postfix's mail_owner: postsuper -H); "service", it
    # does not, `postwarden releaser` does (the .deb's postwarden-releaser.service, as root).
    releaser: Literal["thread", "service"] = "thread"
    # Added to the spec (issue 21): who speaks the milter protocol. "python", postwarden on one
    # asyncio thread (milter/transport.py); "libmilter", pymilter's C library, a thread per
    # connection (what the first batch ran; slower under load: docs/benchmarks.md).
    transport: Literal["python", "libmilter"] = "python"


class LogSection(Strict):
    to: Literal["syslog", "stderr"] = "syslog"
    level: Literal["debug", "info", "warning", "error"] = "info"


# ---- [store].shared (issue 19): counts, locks and notice state in Redis ----------------------
def _shared_url(value: str) -> str:
    if not value:
        return value
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018  (parses it: a bad port raises ValueError)
    except ValueError as exc:
        raise ValueError(f"not a Redis address: {exc}") from None
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError(
            'want "redis://HOST:PORT/DB", "rediss://HOST:PORT/DB" or "unix:///path?db=N"'
        )
    if parts.password or parts.username:
        raise ValueError("no password inline: put it in shared_password_file")
    if parts.scheme == "unix" and not parts.path.startswith("/"):
        raise ValueError("unix:///path: the socket's absolute path")
    if parts.scheme != "unix" and not parts.hostname:
        raise ValueError("the Redis host is missing")
    return value


class StoreSection(Strict):
    database: str = "/var/lib/postwarden/postwarden.db"
    retention_days: int = Field(default=90, gt=0)
    shared: Annotated[str, AfterValidator(_shared_url)] = ""
    shared_password_file: str = ""


class PostfixSection(Strict):
    config_directory: str = "/etc/postfix"


class ServerSection(Strict):
    hostname: str = ""
    addresses: list[IPAddress] = []


class DnsSection(Strict):
    nameservers: list[Nameserver] = []
    timeout: float = Field(default=5.0, gt=0)


# ---- [metrics] (issue 20): the Prometheus endpoint and the admin's mail without one ----------


def _metrics_listen(text: str) -> str:
    if text == "" or (text.startswith("unix:/") and len(text) > 6):
        return text
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        host = "" if sep else host
    if sep and host and port.isdigit() and 0 < int(port) < 65536:
        return text
    raise ValueError(
        f'"{text}" is not a metrics listener: use "ADDRESS:PORT" (e.g. "127.0.0.1:9617"),'
        ' "unix:/absolute/path" or "" (off)'
    )


class MetricsSection(Strict):
    listen: Annotated[str, AfterValidator(_metrics_listen)] = ""
    # Added to the spec: mail [rate].notify when the hold queue holds more than this many
    # messages (0 = never), and when the writer drops or fails rows; looked at every
    # watch_seconds by the daemon, with or without `listen`.
    notify_held_over: int = Field(default=1000, ge=0)
    watch_seconds: int = Field(default=300, gt=0)


class DaemonConfig(Strict):
    """postwarden.toml."""

    policies: str = "/etc/postwarden/policies"
    milter: MilterSection = MilterSection()
    log: LogSection = LogSection()
    store: StoreSection = StoreSection()
    postfix: PostfixSection = PostfixSection()
    server: ServerSection = ServerSection()
    dns: DnsSection = DnsSection()
    metrics: MetricsSection = MetricsSection()


# ---- policy files ----------------------------------------------------------------------------


# ---- streams, pacing and warm-up (streams.md) -----------------------------------------------


class DomainStreams(Strict):
    """[domains."example.com"].streams: bulk mail from this domain must use this From domain."""

    bulk: DomainName | None = None


def _pace(text: str) -> str:
    if text:
        parse_rate(text)
    return text


class BulkStream(Strict):
    pace: Annotated[str, AfterValidator(_pace)] = ""  # "" = no pacing


class StreamsSection(Strict):
    bulk: BulkStream = BulkStream()


# The recipient-domain groups [providers] starts from; a [providers] table adds groups or
# replaces the named ones. A pattern is a domain, or "name.*" (any last label or labels).
DEFAULT_PROVIDERS: dict[str, list[str]] = {
    "gmail": ["gmail.com", "googlemail.com"],
    "microsoft": ["outlook.com", "hotmail.*", "live.*", "msn.com"],
    "yahoo": ["yahoo.*", "ymail.com", "aol.com"],
}
_PROVIDER_PATTERN = re.compile(r"^(?:[a-z0-9-]+\.)*[a-z0-9-]+(?:\.[a-z0-9-]+|\.\*)$")


def _provider_pattern(text: str) -> str:
    text = text.lower()
    if not _PROVIDER_PATTERN.match(text):
        raise ValueError(f'"{text}" is not a provider domain: write "gmail.com" or "hotmail.*"')
    return text


ProviderPattern = Annotated[str, AfterValidator(_provider_pattern)]
GroupName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")]


class WarmupEntry(Strict):
    """[warmup."news.example.com"] (or [warmup.server])."""

    start: _dt.date
    daily: list[Annotated[int, Field(gt=0)]] = Field(min_length=1)
    providers: list[GroupName] = ["gmail", "microsoft", "yahoo"]


def _warmup_key(text: str) -> str:
    text = text.lower()
    if text != "server" and not is_domain(text):
        raise ValueError(f'"{text}" is neither a From domain nor "server"')
    return text


WarmupKey = Annotated[str, AfterValidator(_warmup_key)]


class RateOverride(Strict):
    messages: list[RateSpec] | None = None
    recipients: list[RateSpec] | None = None


class KeyRef(Strict):
    selector: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    file: str
    active: bool = True


class DomainPolicy(Strict):
    include_subdomains: bool = False
    keys: list[KeyRef] = []
    rate: RateOverride | None = None
    bulk: bool = False
    streams: DomainStreams | None = None  # streams.md
    contact: Address | None = None  # feedback.md: who hears about this domain's complaints


class UserPolicy(Strict):
    send_as: list[SendAs] | None = None
    rate: RateOverride | None = None
    bulk: bool = False


class DefaultsSection(Strict):
    alignment: Literal["relaxed", "strict"] = "relaxed"
    unknown_from_domain: Action = "reject"
    send_as: list[SendAs] = ["{login}"]


class LocalSection(Strict):
    send_as: dict[str, list[LocalSendAs]] = {}


class HeadersSection(Strict):
    require: list[str] = ["From", "Date", "Message-ID"]
    add_missing: list[Literal["Date", "Message-ID"]] = ["Date", "Message-ID"]
    remove: list[str] = ["X-Originating-IP", "X-PHP-Originating-Script"]
    wrap_bare_html: bool = True
    # ---- issue 14 (headers): repair instead of refusing; strip the client's trace ----
    repair: bool = True
    strip_client_received: bool = False  # an addition to the spec (config.md has no such key)
    on_violation: Action = "reject"


class BulkSection(Strict):
    recipients: int = Field(default=50, gt=0)
    require_one_click_unsubscribe: bool = True
    on_violation: Action = "reject"


class RateSection(Strict):
    messages: list[RateSpec] = ["30/minute", "500/hour", "2000/day"]
    recipients: list[RateSpec] = ["200/minute", "5000/day"]
    on_exceed: Literal["tempfail", "quarantine", "reject"] = "quarantine"
    lock: bool = True
    notify: list[Address] = []


# ---- [reports] (reports.md) ---------------------------------------------------------------------


class ReportsSection(Strict):
    ready_share: float = Field(default=0.98, gt=0, le=1)
    ready_days: int = Field(default=14, gt=0, le=366)


# ---- [feedback] (feedback.md) -------------------------------------------------------------------

DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """ "15m", "2h", "7d" (as `log --since` takes them) -> seconds."""
    m = re.fullmatch(r"([0-9]{1,6})([smhd])", text.strip())
    if not m or int(m.group(1)) == 0:
        raise ValueError(f'"{text}" is not a duration: write 15m, 2h or 7d')
    return int(m.group(1)) * DURATION_UNITS[m.group(2)]


def _duration(text: str) -> str:
    parse_duration(text)
    return text.strip()


class FeedbackSection(Strict):
    scope: Literal["domain", "server"] = "domain"
    notice_interval: Annotated[str, AfterValidator(_duration)] = "1h"
    alert_rate: float = Field(default=0.001, gt=0, le=1)
    feedback_id: bool = False

    @property
    def notice_interval_s(self) -> int:
        return parse_duration(self.notice_interval)


# ---- merged policy ---------------------------------------------------------------------------


class PolicyFile(Strict):
    """One policy file; also the merged policy of all of them."""

    defaults: DefaultsSection | None = None
    domains: dict[DomainName, DomainPolicy] = {}
    users: dict[Login, UserPolicy] = {}
    local: LocalSection | None = None
    headers: HeadersSection | None = None
    bulk: BulkSection | None = None
    rate: RateSection | None = None
    reports: ReportsSection | None = None
    # streams.md: each defined in one file only
    feedback: FeedbackSection | None = None
    streams: StreamsSection | None = None
    warmup: dict[WarmupKey, WarmupEntry] | None = None
    providers: dict[GroupName, list[ProviderPattern]] | None = None

    @model_validator(mode="after")
    def _warmup_groups_exist(self) -> PolicyFile:
        known = set(DEFAULT_PROVIDERS) | set(self.providers or {})
        for key, entry in (self.warmup or {}).items():
            for group in entry.providers:
                if group not in known:
                    raise ValueError(
                        f'[warmup."{key}"].providers names "{group}", which is no [providers]'
                        f" group (known: {', '.join(sorted(known))})"
                    )
        return self


SINGLETON_SECTIONS = (
    "defaults",
    "local",
    "headers",
    "bulk",
    "rate",
    "reports",
    "feedback",
    "streams",
    "warmup",
    "providers",
)


class Policy(Strict):
    """The merged policy of every policy file, with each section filled in, plus the outbound
    rules from postwarden.toml: everything the engine needs, and nothing it must not touch."""

    defaults: DefaultsSection = DefaultsSection()
    domains: dict[LowerName, DomainPolicy] = {}
    users: dict[Login, UserPolicy] = {}
    local: LocalSection = LocalSection()
    headers: HeadersSection = HeadersSection()
    bulk: BulkSection = BulkSection()
    rate: RateSection = RateSection()
    reports: ReportsSection = ReportsSection()
    streams: StreamsSection = StreamsSection()
    warmup: dict[str, WarmupEntry] = {}
    providers: dict[str, list[str]] = {}  # as written; provider_groups() adds the defaults
    feedback: FeedbackSection = FeedbackSection()
    outbound: list[OutboundRule] = ["sasl", "local", "daemon:ORIGINATING"]
    hash: str = ""

    def rate_windows(self) -> list[int]:
        """Every window length any cap uses: what the store counts for each sender."""
        specs = [*self.rate.messages, *self.rate.recipients]
        overrides = [d.rate for d in self.domains.values()] + [u.rate for u in self.users.values()]
        for rate in overrides:
            if rate is not None:
                specs += [*(rate.messages or []), *(rate.recipients or [])]
        return sorted({parse_rate(s)[1] for s in specs})

    def provider_groups(self) -> dict[str, list[str]]:
        return {**DEFAULT_PROVIDERS, **self.providers}

    def hosted_domain(self, domain: str) -> str | None:
        """The [domains] entry that hosts `domain`, honouring include_subdomains, or None."""
        domain = domain.lower().rstrip(".")
        if domain in self.domains:
            return domain
        labels = domain.split(".")
        for i in range(1, len(labels) - 1):
            parent = ".".join(labels[i:])
            entry = self.domains.get(parent)
            if entry is not None and entry.include_subdomains:
                return parent
        return None
