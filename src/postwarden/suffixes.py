"""The Public Suffix List, parsed once per process, when first asked for.

Parsing the list bundled with publicsuffixlist takes about 60 ms of CPU (165 ms under a
profiler). Built at import by three modules, every command paid it before doing anything,
`postwarden reload` among them, on the machine that carries the mail (issue 21). The milter asks for it at start
(Daemon.__init__), so its first message does not wait for the parse.
"""

from __future__ import annotations

import threading

from publicsuffixlist import PublicSuffixList

_lock = threading.Lock()
_list: PublicSuffixList | None = None


def public_suffixes() -> PublicSuffixList:
    """The one parsed list (the bundled data: no network, no file outside the package)."""
    global _list
    if _list is None:
        with _lock:
            if _list is None:
                _list = PublicSuffixList()
    return _list


def organisational(domain: str) -> str:
    """The organisational domain (the list's private suffix), else the domain itself."""
    return public_suffixes().privatesuffix(domain) or domain
