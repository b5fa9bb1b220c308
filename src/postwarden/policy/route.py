"""One route per message: which outbound rule it matched, who sent it, which caps apply.

Pure. The engine, the milter adapter, `postwarden senders` and the TUI all ask this module, so
what `senders` shows is what the milter enforces (decisions.md, Sender identity):

| how the mail came                     | identity                                           |
|---------------------------------------|----------------------------------------------------|
| SMTP with SASL                        | `sasl:<login>`, lower-cased                        |
| sendmail(1) (pickup)                  | `local:<the [local] user whose patterns match the   |
|                                       | envelope sender>`, else `local:<envelope sender>`  |
| SMTP without SASL (network:, daemon:) | `ip:<client address>`                              |

Caps depend on the identity alone (never on what a message says), so that an identity has one
set of caps wherever it is shown: a `sasl:` login's [users] entry, else, when the login is an
address, its domain's [domains] entry, else [rate]; `local:` and `ip:` senders have [rate].
An override replaces the caps of the windows it names and keeps the others.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from postwarden.config.models import Policy, UserPolicy, parse_rate
from postwarden.policy.model import Facts
from postwarden.textsafe import readable

Cap = tuple[int, int, str]  # (count, window seconds, "N/unit")


@dataclass(frozen=True)
class Caps:
    messages: tuple[Cap, ...]
    recipients: tuple[Cap, ...]


@dataclass(frozen=True)
class Route:
    outbound_rule: str | None  # the [milter].outbound rule matched; None: inbound
    identity: str  # the sender identity: the key for send_as, caps and locks
    login: str  # the SASL login, lower-cased ("" when none)
    local_user: str  # the [local] user the envelope sender names ("" when none)
    caps: Caps

    @property
    def outbound(self) -> bool:
        return self.outbound_rule is not None


def matches_outbound(facts: Facts, rules: list[str]) -> str | None:
    """The first outbound rule this message matches, or None (inbound)."""
    for rule in rules:
        kind, _, arg = rule.partition(":")
        if rule == "sasl" and facts.auth_login:
            return rule
        if rule == "local" and facts.local_submission:
            return rule
        if kind == "daemon" and not facts.local_submission and facts.daemon_name == arg:
            return rule
        if kind == "network" and not facts.local_submission and _in_network(facts.client_addr, arg):
            return rule
    return None


def _in_network(addr: str, network: str) -> bool:
    try:
        return ipaddress.ip_address(addr) in ipaddress.ip_network(network, strict=False)
    except ValueError:
        return False


def pattern_matches(pattern: str, address: str, login: str) -> bool:
    """A send_as pattern: an address, *@domain, *@*.domain, `{login}` (the login itself when it
    is an address) or `<>` (the null sender, for [local] only). Case-insensitive."""
    address = address.lower()
    if pattern == "<>":
        return address == ""
    if not address:
        return False
    if pattern == "{login}":
        return "@" in login and address == login.lower()
    local, _, domain = pattern.lower().rpartition("@")
    addr_domain = address.rpartition("@")[2]
    if local == "*" and domain.startswith("*."):
        return addr_domain.endswith(domain[1:])
    if local == "*":
        return addr_domain == domain
    return address == pattern.lower()


def local_user(mail_from: str, policy: Policy) -> str:
    """The [local] user whose send_as patterns match the envelope sender: the first in the
    policy's order. A null sender matches only a user that lists "<>"."""
    for user, patterns in policy.local.send_as.items():
        if any(pattern_matches(p, mail_from, "") for p in patterns):
            return user
    return ""


def _example(pattern: str) -> str:
    """An address a pattern grants: the pattern itself, or one inside its wildcard."""
    if pattern == "<>":
        return ""
    local, _, domain = pattern.lower().rpartition("@")
    if domain.startswith("*."):
        return f"x@postwarden-example.{domain[2:]}"
    return f"x@{domain}" if local == "*" else pattern.lower()


def local_overlaps(policy: Policy) -> list[str]:
    """[local] grants that overlap: an envelope sender two users' patterns both match names
    the first of them (local_user), so the second could send as the first's identity, caps
    and lock wherever Postfix lets it use that sender. check-config warns of each."""
    out = []
    users = list(policy.local.send_as.items())
    for i, (first, first_patterns) in enumerate(users):
        for later, later_patterns in users[i + 1 :]:
            shared = [
                p
                for p in later_patterns
                if any(pattern_matches(q, _example(p), "") for q in first_patterns)
            ] + [
                q
                for q in first_patterns
                if any(pattern_matches(p, _example(q), "") for p in later_patterns)
            ]
            if shared:
                out.append(
                    f'[local].send_as: "{later}" and "{first}" both match {shared[0]}: mail from'
                    f" such a sender counts as local:{first} (listed first), so {later} could"
                    " send as it; give each user patterns of its own"
                )
    return out


def user_entry(policy: Policy, login: str) -> UserPolicy | None:
    """The [users] entry of a login, compared without regard to case."""
    login = login.lower()
    entry = policy.users.get(login)
    if entry is not None:
        return entry
    for name, candidate in policy.users.items():
        if name.lower() == login:
            return candidate
    return None


def _merge(base: list[str], override: list[str] | None) -> list[str]:
    """The override's caps replace the base's caps of the same window; the others stay."""
    if override is None:
        return base
    windows = {parse_rate(spec)[1] for spec in override}
    return [spec for spec in base if parse_rate(spec)[1] not in windows] + list(override)


# caps_for's answers, per policy object and identity: a message asks twice (MAIL FROM and
# end-of-message), and every message of a sender asks the same. The policy itself is kept with
# each answer and compared by identity (a reloaded policy is another object, never confused
# with the old one by a reused id()); bounded, so a flood of identities cannot grow it.
_CAPS: dict[tuple[int, str], tuple[Policy, Caps]] = {}
CAPS_CACHED = 4096


def caps_for(identity: str, policy: Policy) -> Caps:
    """The caps of an identity, from the identity alone (see the module text)."""
    key = (id(policy), identity)
    hit = _CAPS.get(key)
    if hit is not None and hit[0] is policy:
        return hit[1]
    caps = _caps_for(identity, policy)
    if len(_CAPS) >= CAPS_CACHED:
        _CAPS.clear()
    _CAPS[key] = (policy, caps)
    return caps


def _caps_for(identity: str, policy: Policy) -> Caps:
    kind, _, rest = identity.partition(":")
    messages, recipients = list(policy.rate.messages), list(policy.rate.recipients)
    if kind == "sasl":
        hosted = policy.hosted_domain(rest.rpartition("@")[2]) if "@" in rest else None
        user = user_entry(policy, rest)
        for override in (
            policy.domains[hosted].rate if hosted else None,
            user.rate if user is not None else None,
        ):
            if override is not None:
                messages = _merge(messages, override.messages)
                recipients = _merge(recipients, override.recipients)

    def caps(specs: list[str]) -> tuple[Cap, ...]:
        return tuple(sorted(((*parse_rate(s), s) for s in specs), key=lambda c: c[1]))

    return Caps(caps(messages), caps(recipients))


def identity_of(facts: Facts, policy: Policy) -> tuple[str, str, str]:
    """(identity, login, local user) for a message's facts."""
    if facts.auth_login:
        # readable(): an identity is a key in the store, whatever bytes the login held.
        login = readable(facts.auth_login.strip().lower())
        return f"sasl:{login}", login, ""
    if facts.local_submission:
        user = facts.local_user or local_user(facts.mail_from, policy)
        if user:
            return f"local:{user}", "", user
        return f"local:{readable(facts.mail_from.lower()) or '<>'}", "", ""
    return f"ip:{readable(facts.client_addr)}", "", ""


def route(facts: Facts, policy: Policy) -> Route:
    who, login, user = identity_of(facts, policy)
    return Route(
        outbound_rule=matches_outbound(facts, policy.outbound),
        identity=who,
        login=login,
        local_user=user,
        caps=caps_for(who, policy),
    )


def send_as_patterns(route_: Route, facts: Facts, policy: Policy) -> tuple[list[str], str] | None:
    """The patterns this sender may send as, and who it is in a sentence; None when the
    identity has no send_as rules (an `ip:` sender let in by a network or daemon rule)."""
    if route_.login:
        entry = user_entry(policy, route_.login)
        patterns = entry.send_as if entry is not None and entry.send_as is not None else None
        return (patterns if patterns is not None else policy.defaults.send_as), route_.login
    if facts.local_submission:
        # Postfix shows a milter no uid on the pickup path. With local_login_sender_maps,
        # postdrop lets each local user only the envelope senders [local] gives it, so the
        # envelope sender names the user, and its From may be what that user's entry allows.
        if not route_.local_user:
            return [], f"the local sender <{facts.mail_from}>"
        patterns = policy.local.send_as.get(route_.local_user, [])
        return [p for p in patterns if p != "<>"], f"the local user {route_.local_user}"
    return None
