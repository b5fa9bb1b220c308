"""Every check module, imported so that each registers itself. One file per check."""

from postwarden.policy.checks import (
    bulk,
    from_domain,
    headers,
    identity,
    outbound,
    pace,
    rate,
    streams,
    suppression,
    warmup,
)

__all__ = [
    "bulk",
    "from_domain",
    "headers",
    "identity",
    "outbound",
    "pace",
    "rate",
    "streams",
    "suppression",
    "warmup",
]
