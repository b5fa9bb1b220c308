"""The pure policy engine. Imports no Milter, dkim, dns, textual or sqlite_utils (tested)."""

from postwarden.policy.engine import evaluate
from postwarden.policy.model import Action, Facts, Reason, Verdict

__all__ = ["Action", "Facts", "Reason", "Verdict", "evaluate"]
