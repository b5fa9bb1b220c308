"""Text as it is stored and shown: readable whatever bytes it held.

pymilter hands header values over decoded with surrogateescape, so a raw Latin-1 byte
(`Subject: Caf\\xe9`) arrives as 'Caf\\udce9', which sqlite3 (and anything that encodes UTF-8
strictly) refuses. `readable` turns such a string back into its bytes and decodes them as
UTF-8, reading each byte that is not UTF-8 as Latin-1: 'Café'. Nothing raises.
"""

from __future__ import annotations

from postwarden.textsafe import readable, readable_value

__all__ = ["readable", "readable_value"]
