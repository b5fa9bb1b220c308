"""Every check module, imported so that each registers itself. One file per check."""

from postwarden.policy.checks import from_domain, identity, outbound, rate

__all__ = ["from_domain", "identity", "outbound", "rate"]
