"""postwarden: an outbound-mail guard for Postfix."""

__version__ = "0.1.0"

# Exit codes, as ../shared/spec/cli.md gives them: fine, found a failure, usage, temporary
# failure (Postfix or DNS unreachable), configuration error.
EX_OK, EX_FOUND, EX_USAGE, EX_TEMPFAIL, EX_CONFIG = 0, 1, 2, 75, 78
