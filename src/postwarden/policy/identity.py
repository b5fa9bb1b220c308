"""Sender identity (decisions.md, Sender identity) and the outbound test ([milter].outbound)."""

from __future__ import annotations

import ipaddress

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
