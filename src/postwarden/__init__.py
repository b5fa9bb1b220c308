"""postwarden: an outbound-mail guard for Postfix."""

__version__ = "0.1.0"
