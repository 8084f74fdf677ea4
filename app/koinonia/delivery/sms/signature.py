"""Twilio webhook signatures (header ``X-Twilio-Signature``).

Twilio signs the full URL it called followed by every POST parameter, sorted by name, written
as name+value with no separators, using HMAC-SHA1 keyed with the account's auth token, and
sends the base64 digest.  Written here (a dozen lines) rather than pulling in the whole Twilio
SDK for it; the algorithm is documented at twilio.com/docs/usage/security.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit, urlunsplit

SIGNATURE_HEADER = "X-Twilio-Signature"


def _pairs(params: Mapping[str, str] | Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    if isinstance(params, Mapping):
        getlist = getattr(params, "getlist", None)
        if getlist is not None:  # a MultiDict: keep repeated fields
            return [(key, value) for key in params for value in getlist(key)]
        return list(params.items())
    return list(params)


def compute_signature(
    auth_token: str, url: str, params: Mapping[str, str] | Iterable[tuple[str, str]]
) -> str:
    pairs = _pairs(params)
    payload = url
    for key in sorted({key for key, _ in pairs}):
        for value in sorted(value for name, value in pairs if name == key):
            payload += key + value
    digest = hmac.new(auth_token.encode(), payload.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def _url_variants(url: str) -> list[str]:
    # Twilio signs the URL as configured; a proxy may add or drop the default port.
    # Accept both spellings, as Twilio's own validators do.
    parts = urlsplit(url)
    variants = [url]
    default_port = {"https": 443, "http": 80}.get(parts.scheme)
    if parts.port is not None and parts.port == default_port:
        variants.append(urlunsplit(parts._replace(netloc=parts.hostname or "")))
    elif parts.port is None and default_port is not None and parts.hostname:
        variants.append(urlunsplit(parts._replace(netloc=f"{parts.hostname}:{default_port}")))
    return variants


def validate_signature(
    auth_token: str,
    url: str,
    params: Mapping[str, str] | Iterable[tuple[str, str]],
    signature: str | None,
) -> bool:
    """True when ``signature`` is Twilio's for this URL and these POST parameters."""
    if not signature or not auth_token:
        return False
    pairs = _pairs(params)
    return any(
        hmac.compare_digest(compute_signature(auth_token, variant, pairs), signature)
        for variant in _url_variants(url)
    )
