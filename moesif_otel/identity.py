"""Who made a call and from where, derived from request headers.

Same rules as moesifasgi (user from a JWT claim or the Basic user name, client IP from the usual
proxy headers), but lenient where moesifasgi is brittle (scheme case, url-safe base64, ``ip:port``,
bracketed IPv6, RFC 7239 ``for=``). Headers are untrusted input read on the exporter thread, so
these functions return None for anything malformed and never raise.
"""

from __future__ import annotations

import base64
import binascii
import functools
import ipaddress
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["CLIENT_IP_HEADERS", "client_ip", "user_id_from_authorization"]

# Checked in this order; the first valid IP wins (moesifasgi's order).
CLIENT_IP_HEADERS = (
    "x-client-ip",
    "x-forwarded-for",
    "cf-connecting-ip",
    "true-client-ip",
    "x-real-ip",
    "x-cluster-client-ip",
    "x-forwarded",
    "forwarded-for",
    "forwarded",
)


def user_id_from_authorization(
    headers: Mapping[str, str],
    header_names: Sequence[str] = ("authorization",),
    field: str = "sub",
    *,
    lowered: bool = False,
) -> str | None:
    """The user id carried by the first configured header that yields one, else None.

    ``header_names`` may also be one comma-separated string (the ``AUTHORIZATION_HEADER_NAME``
    setting). Unlike moesifasgi, a present header that yields nothing (an opaque API key) does not
    stop the search: the next configured header is tried.
    """
    try:
        if not lowered:
            headers = _lowered(headers)
        claim = (field if isinstance(field, str) else "").strip() or "sub"
        for name in _header_names(header_names):
            value = _header(headers, name)
            if value:
                user = _user_from_value(value, claim)
                if user is not None:
                    return user
    except Exception:  # a hostile Mapping or header value must not break export
        return None
    return None


def client_ip(headers: Mapping[str, str], peer: str | None, *, lowered: bool = False) -> str | None:
    """First valid IP from the proxy headers, else ``peer`` if it is a valid IP, else None.

    ``lowered``: the caller guarantees lower-case names (capture does), sparing a pass over them.
    """
    try:
        if not lowered:
            headers = _lowered(headers)
        if headers.keys().isdisjoint(CLIENT_IP_HEADERS):  # no proxy in front: the common case
            return _parse_ip(peer) if isinstance(peer, str) else None
    except Exception:
        headers = {}
    for name in CLIENT_IP_HEADERS:
        try:
            value = _header(headers, name)
            ip = _first_ip(value) if value else None
        except Exception:
            ip = None
        if ip is not None:
            return ip
    return _parse_ip(peer) if isinstance(peer, str) else None


# --- headers ---------------------------------------------------------------------------------------


def _header_names(names: Sequence[str] | str) -> list[str]:
    if isinstance(names, str):
        names = [names]
    out: list[str] = []
    for item in names or ():
        if isinstance(item, str):
            out.extend(n.strip().lower() for n in item.split(",") if n.strip())
    return out


def _lowered(headers: Mapping[str, str]) -> Mapping[str, str]:
    """Names are meant to be lower-case already (they are, from capture); do not rely on it.

    One pass here instead of a scan per looked-up name: nine names are looked up per event.
    """
    if all(isinstance(key, str) and key == key.strip().lower() for key in headers):
        return headers
    lowered: dict[str, str] = {}
    for key, value in headers.items():
        if isinstance(key, str):
            lowered.setdefault(key.strip().lower(), value)
    return lowered


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    elif isinstance(value, (list, tuple)):
        value = ", ".join(str(v) for v in value)
    return value if isinstance(value, str) else None


# --- user id ---------------------------------------------------------------------------------------


def _user_from_value(value: str, claim: str) -> str | None:
    value = value.split(",", 1)[0].strip()
    parts = value.split(None, 1)
    if not parts:
        return None
    if len(parts) == 2:
        scheme, credentials = parts[0].lower(), parts[1].strip()
        if scheme == "basic":
            return _basic_user(credentials)
        # Bearer, or any other scheme: its credentials are read like a bare token.
        return _token_user(credentials, claim)
    return _token_user(value, claim)


def _token_user(token: str, claim: str) -> str | None:
    # A JWT's claims are its second segment; a token without dots may be base64 JSON itself.
    payload = token.split(".")[1] if "." in token else token
    raw = _b64decode(payload)
    if raw is None:
        return None
    try:
        claims = json.loads(raw.decode("utf-8-sig"))
    except (ValueError, RecursionError):
        return None
    if not isinstance(claims, dict):
        return None
    return _as_user_id(_claim(claims, claim))


def _claim(claims: dict[str, Any], claim: str) -> Any:
    if claim in claims:
        return claims[claim]
    wanted = claim.lower()  # moesifasgi lower-cases the claim names
    for key, value in claims.items():
        if key.lower() == wanted:
            return value
    return None


def _as_user_id(value: Any) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        return value if value.strip() else None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return str(value)
    return None  # objects and arrays are not ids


def _basic_user(credentials: str) -> str | None:
    raw = _b64decode(credentials)
    if raw is None:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")  # RFC 7617's historical default
    user, sep, _ = text.partition(":")
    return user if sep and user.strip() else None


def _b64decode(text: str) -> bytes | None:
    """Standard or url-safe base64, padded or not; None if it is not base64."""
    text = text.strip().rstrip("=")
    if not text or len(text) % 4 == 1:
        return None
    text = text.replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


# --- client IP -------------------------------------------------------------------------------------


def _first_ip(value: str) -> str | None:
    for entry in value.split(","):
        if "=" in entry:  # RFC 7239: for=192.0.2.1;proto=https, or for="[2001:db8::1]:4711"
            for pair in entry.split(";"):
                key, sep, token = pair.partition("=")
                if sep and key.strip().lower() == "for":
                    ip = _parse_ip(token)
                    if ip is not None:
                        return ip
        else:
            ip = _parse_ip(entry)
            if ip is not None:
                return ip
    return None


@functools.lru_cache(maxsize=4096)  # the same few peers and proxies, over and over
def _parse_ip(token: str) -> str | None:
    """``ip``, ``ipv4:port``, ``[ipv6]``, ``[ipv6]:port`` or bare IPv6 -> the IP; anything else -> None."""
    text = token.strip().strip('"').strip()
    if not text or len(text) > 100:
        return None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        host, rest = text[1:end], text[end + 1 :]
        if rest and not (rest.startswith(":") and _is_port(rest[1:])):
            return None
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
        if not _is_port(port):
            return None
    else:
        host = text
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


def _is_port(text: str) -> bool:
    return 0 < len(text) <= 5 and text.isascii() and text.isdigit() and int(text) <= 65535
