"""Sender identity (decisions.md, Sender identity) and the outbound test ([milter].outbound)."""

from __future__ import annotations

import ipaddress

from postwarden.config.models import Policy
from postwarden.policy.model import Facts


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


def identity(facts: Facts) -> str:
    if facts.auth_login:
        return f"sasl:{facts.auth_login}"
    if facts.local_submission:
        return f"local:{facts.local_user or facts.mail_from or '<>'}"
    return f"ip:{facts.client_addr}"


def pattern_matches(pattern: str, address: str, login: str) -> bool:
    """A send_as pattern: an address, *@domain, *@*.domain, or {login} (the login itself when
    it is an address). Addresses compare case-insensitively."""
    address = address.lower()
    if pattern == "{login}":
        return "@" in login and address == login.lower()
    local, _, domain = pattern.lower().rpartition("@")
    addr_domain = address.rpartition("@")[2]
    if local == "*" and domain.startswith("*."):
        return addr_domain.endswith(domain[1:])
    if local == "*":
        return addr_domain == domain
    return address == pattern.lower()


def send_as_patterns(facts: Facts, policy: Policy) -> tuple[list[str], str] | None:
    """The patterns this sender may send as, and who it is in a sentence; None when the
    identity has no send_as rules (an `ip:` sender let in by a network or daemon rule)."""
    if facts.auth_login:
        entry = policy.users.get(facts.auth_login)
        patterns = entry.send_as if entry is not None and entry.send_as is not None else None
        return (patterns if patterns is not None else policy.defaults.send_as), facts.auth_login
    if facts.local_submission:
        # Postfix shows a milter no uid on the pickup path. With local_login_sender_maps,
        # postdrop lets each local user only the envelope senders [local] gives it, so the
        # envelope sender names the user: its From may be what that user's entry allows.
        users = [
            patterns
            for patterns in policy.local.send_as.values()
            if not facts.mail_from or any(pattern_matches(p, facts.mail_from, "") for p in patterns)
        ]
        return [p for patterns in users for p in patterns], f"the local sender <{facts.mail_from}>"
    return None
