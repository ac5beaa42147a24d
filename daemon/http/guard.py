"""Who may use the gateway: app keys (constant-time), admin scope, and browsers on other origins.

Every handler runs these checks before anything else; only an app key's name is ever
kept (for logs), never the key.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from urllib.parse import urlsplit

from aiohttp import web

from gatewayd.daemon.core.graph import AppKey, Graph
from gatewayd.daemon.http.errors import ApiError


def authenticate(request: web.BaseRequest, graph: Graph) -> AppKey | None:
    """The app key the request presents, compared in constant time; None when auth is off."""
    server = graph.server
    keys = server.keys
    if keys is None:
        return None
    header = request.headers.get("Authorization", "")
    token = header[7:].strip() if header[:7].lower() == "bearer " else request.headers.get("x-api-key", "")
    if not token:
        raise ApiError(401, "missing_api_key", "an app key is required: send 'Authorization: Bearer KEY'")
    presented = token.encode("utf-8", "surrogateescape")  # header bytes that are not UTF-8 stay bytes
    digest = hashlib.sha256(presented).digest() if server.hashed_keys else b""
    found = None
    for key in keys:  # no early exit: every key is compared, so timing says nothing
        if hmac.compare_digest(digest if key.hashed else presented, key.expected):
            found = key
    if found is None:
        raise ApiError(401, "invalid_api_key", "the app key is not valid")
    return found


def require_admin(request: web.BaseRequest, graph: Graph) -> None:
    """Only an admin key (`role: admin`) passes when keys are configured; anyone when auth is off."""
    key = authenticate(request, graph)
    if key is not None and not key.admin:
        raise ApiError(403, "permission_denied", f"the app key '{key.name}' may not use {request.path}: "
                       "only a key with role: admin may")


def hostname_of(authority: str) -> str | None:
    try:
        return urlsplit("//" + authority).hostname
    except ValueError:
        return None


def browser_may_use(host: str) -> bool:
    """A browser may reach the gateway only by an IP literal or `localhost`: under any other
    name the page may be an attacker's whose name now resolves here (DNS rebinding), and
    then its Origin matches the Host although it is another origin."""
    name = hostname_of(host)
    if not name:
        return False
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def refuse_cross_origin(request: web.BaseRequest) -> None:
    """A browser page on another origin may not use the gateway (no CORS, ever).

    Only browsers send `Origin` and `Sec-Fetch-Site`; SDKs and curl send neither and pass.
    """
    headers = request.headers
    site = headers.get("Sec-Fetch-Site")
    origin = headers.get("Origin")
    if site is None and origin is None:
        return
    host = headers.get("Host", "").lower()
    refused = site in ("cross-site", "same-site") or not browser_may_use(host)
    if origin is not None and not refused:
        try:
            refused = urlsplit(origin).netloc.lower() != host
        except ValueError:  # not a URL at all
            refused = True
    if refused:
        raise ApiError(403, "cross_origin", "requests from a browser on another origin are refused")
