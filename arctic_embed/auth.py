"""API-key check shared by every front end (gRPC metadata, HTTP header): `authorization: Bearer <key>`."""

from __future__ import annotations

import hmac


def bearer_matches(header: str | None, api_key: str) -> bool:
    """True when `header` is `Bearer <api_key>` (scheme case-insensitive), compared in constant time."""
    if header is None:
        return False
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(token.strip().encode(), api_key.encode())
