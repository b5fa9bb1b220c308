"""DKIM signing: relaxed/relaxed, From oversigned, no l=, RSA through OpenSSL and Ed25519.

dkimpy canonicalises the headers and builds the DKIM-Signature header; the one step it does
slowly (pure-Python RSA, a PEM parse per signature) is done here with keys loaded once, through
`cryptography`. The body is canonicalised and hashed as it arrives, in chunks.
"""

from postwarden.signing.body import RelaxedBodyHasher, canonicalize_body
from postwarden.signing.signer import SIGN_HEADERS, Signature, sign, sign_all

__all__ = [
    "SIGN_HEADERS",
    "RelaxedBodyHasher",
    "Signature",
    "canonicalize_body",
    "sign",
    "sign_all",
]
