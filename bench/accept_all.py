"""The floor: a pymilter milter that accepts every message and does nothing else.

`python bench/accept_all.py unix:/path/to.sock` -- what any pymilter milter costs before it
does any work, measured beside postwarden in `make bench`.
"""

from __future__ import annotations

import os
import sys

import Milter


class AcceptAll(Milter.Base):  # type: ignore[misc]
    def eom(self) -> int:
        return Milter.ACCEPT  # type: ignore[no-any-return]


def main() -> int:
    socket = sys.argv[1]
    Milter.factory = AcceptAll
    Milter.set_flags(0)
    old = os.umask(0o000)
    try:
        Milter.runmilter("accept-all", socket, 30)
    finally:
        os.umask(old)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
