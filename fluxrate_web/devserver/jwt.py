"""HS256 JSON Web Tokens with the standard library only (RFC 7519 subset)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

DEFAULT_SECRET = "fluxrate-devserver-insecure-secret"
DEFAULT_TTL = 15 * 60  # the dashboard's access_token lives 15 minutes
_HEADER = {"alg": "HS256", "typ": "JWT"}


class JWTError(ValueError):
    """The token is malformed, forged or expired."""


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError):
        raise JWTError("malformed token") from None


def _sign(signing_input: bytes, secret: str) -> bytes:
    return hmac.new(secret.encode(), signing_input, hashlib.sha256).digest()


def encode(claims: Mapping[str, Any], secret: str) -> str:
    header = _b64encode(json.dumps(_HEADER, separators=(",", ":")).encode())
    payload = _b64encode(json.dumps(dict(claims), separators=(",", ":")).encode())
    signing_input = f"{header}.{payload}".encode("ascii")
    return f"{header}.{payload}.{_b64encode(_sign(signing_input, secret))}"


def decode(token: str, secret: str, *, now: float | None = None) -> dict[str, Any]:
    """Verify signature (HS256 only) and ``exp``/``nbf``; return the claims."""
    parts = token.split(".")
    if len(parts) != 3:
        raise JWTError("malformed token")
    header_b64, payload_b64, signature_b64 = parts
    try:
        header = json.loads(_b64decode(header_b64))
        claims = json.loads(_b64decode(payload_b64))
    except (ValueError, UnicodeDecodeError):
        raise JWTError("malformed token") from None
    if not isinstance(header, dict) or header.get("alg") != "HS256":
        raise JWTError("unsupported algorithm")
    expected = _sign(f"{header_b64}.{payload_b64}".encode("ascii"), secret)
    if not hmac.compare_digest(expected, _b64decode(signature_b64)):
        raise JWTError("bad signature")
    if not isinstance(claims, dict):
        raise JWTError("malformed claims")
    current = time.time() if now is None else now
    exp = claims.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        raise JWTError("missing exp")
    if current >= exp:
        raise JWTError("token expired")
    nbf = claims.get("nbf")
    if isinstance(nbf, int | float) and not isinstance(nbf, bool) and current < nbf:
        raise JWTError("token not yet valid")
    return claims


def mint(
    secret: str,
    *,
    org_id: str,
    subject: str = "developer@localhost",
    ttl: float = DEFAULT_TTL,
    now: float | None = None,
) -> str:
    """An ``access_token`` as the dashboard's ``POST /auth/login`` would set it."""
    issued = int(time.time() if now is None else now)
    claims = {
        "sub": subject,
        "org_id": org_id,
        "type": "access",
        "iat": issued,
        "exp": issued + int(ttl),
    }
    return encode(claims, secret)
