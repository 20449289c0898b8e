"""API keys: parsing, hashed constant-time lookup, the auth middleware and Traefik's ForwardAuth.

Keys come from the settings (`auth.api_keys`, `BRIDGE_API_KEYS`) and a keys
file (`auth.keys_file`, or systemd's `$CREDENTIALS_DIRECTORY/api-keys`).
Each entry is `KEY`, `NAME:KEY` or `NAME:KEY:MAX_CONCURRENT`. A key's name
owns its stored responses, parked turns, usage rows and concurrency cap, so
names are unique (a duplicate is a config error) and an unnamed key's name
comes from the key itself (`key-<fingerprint>`), never from its position:
adding or removing an entry cannot hand one key another's state. Only SHA-256
digests are kept; a presented key is hashed and compared against every
digest with `hmac.compare_digest`. Logs and headers carry the key's name and
an 8-hex fingerprint, never the key.

Behind a ForwardAuth proxy the bridge can also trust an identity header,
but only from configured proxy addresses (anyone else could forge it), and
only when it names a configured key, so that key's cap always applies.
Trusting an address trusts every process that can connect from it: trusting
127.0.0.1 trusts every local user of the host.

`/auth/verify` (Traefik ForwardAuth) authenticates the bearer token only,
never the identity header; it applies the bridge's own rule for which paths
need a key to the original URI Traefik sends in `X-Forwarded-Uri`; and with
no keys configured it refuses unless `auth.verify_without_keys` says to
approve everyone.

Errors are raised as the bridge's own (`AuthenticationFailed`,
`PermissionDenied`) and put on the wire by the error middleware; this module
knows no `bridge.api` code.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import posixpath
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import structlog
from aiohttp import web

from bridge.config import ConfigError
from bridge.errors import AuthenticationFailed, PermissionDenied
from bridge.ops.access import ACCESS
from bridge.ops.admission import KEY_LIMITS

log = structlog.get_logger("bridge.auth")

KEY_NAME_HEADER: Final = "X-Bridge-Key-Name"
KEY_ID_HEADER: Final = "X-Bridge-Key-Id"
# Traefik's ForwardAuth names the original request's URI here.
FORWARDED_URI_HEADER: Final = "X-Forwarded-Uri"
# Served without a key: probes, /auth/verify (it checks the key itself) and
# /metrics (guarded by server.metrics_access). Any other path needs one, so a
# path spelled oddly ("//v1/...") or a new route is never open by accident.
PUBLIC_PATHS: Final = frozenset({"/healthz", "/readyz", "/metrics", "/auth/verify"})
CREDENTIAL_NAME: Final = "api-keys"
_MISSING: Final = (
    "You didn't provide an API key. You need to provide your API key in an Authorization "
    "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)


class KeyFormatError(ConfigError, ValueError):
    """A key entry the bridge cannot start with (startup exits 2)."""


@dataclass(frozen=True, slots=True)
class ApiKey:
    name: str
    fingerprint: str
    max_concurrent: int | None
    digest: bytes


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def default_key_name(fingerprint: str) -> str:
    """An unnamed key's name: derived from the key, so it never changes with its position."""
    return f"key-{fingerprint}"


def parse_key_entry(entry: str, *, default_name: str | None = None) -> ApiKey:
    """One entry; an unnamed key is `default_name`, or else `key-<fingerprint>`."""
    parts = entry.strip().split(":")
    if len(parts) == 1:
        name, key, limit = default_name, parts[0], None
    elif len(parts) == 2:
        name, key, limit = parts[0], parts[1], None
    elif len(parts) == 3:
        name, key, limit = parts
    else:
        raise KeyFormatError("expected KEY, NAME:KEY or NAME:KEY:MAX_CONCURRENT")
    if name == "":
        raise KeyFormatError("a key's NAME must not be empty (use KEY alone for no name)")
    if len(key) < 8:
        who = repr(name) if name is not None else "an unnamed entry"
        raise KeyFormatError(f"key for {who} is shorter than 8 characters")
    max_concurrent = None
    if limit:
        if not limit.isdigit() or int(limit) < 1:
            raise KeyFormatError(f"max concurrency for {name!r} must be a positive integer")
        max_concurrent = int(limit)
    digest = _digest(key)
    fingerprint = digest.hex()[:8]
    return ApiKey(
        name=name if name is not None else default_key_name(fingerprint),
        fingerprint=fingerprint,
        max_concurrent=max_concurrent,
        digest=digest,
    )


def read_keys_file(path: Path) -> list[str]:
    lines = path.read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


class KeyStore:
    def __init__(self, keys: Iterable[ApiKey]) -> None:
        self._keys = tuple(keys)
        names: set[str] = set()
        digests: set[bytes] = set()
        for key in self._keys:
            if key.name in names:
                # Two keys under one name would share its responses, parked
                # turns, usage and cap; the bridge refuses to guess which.
                raise KeyFormatError(
                    f"API key name {key.name!r} is used by more than one key; "
                    "give every key its own NAME"
                )
            if key.digest in digests:
                raise KeyFormatError(
                    f"the API key with fingerprint {key.fingerprint} is listed more than once"
                )
            names.add(key.name)
            digests.add(key.digest)

    @classmethod
    def from_sources(
        cls, entries: Iterable[str], keys_file: str | None, env: Mapping[str, str]
    ) -> KeyStore:
        raw = list(entries)
        path = Path(keys_file) if keys_file else None
        credentials = env.get("CREDENTIALS_DIRECTORY")
        if path is None and credentials and (Path(credentials) / CREDENTIAL_NAME).is_file():
            path = Path(credentials) / CREDENTIAL_NAME
        if path is not None:
            raw.extend(read_keys_file(path))
        return cls(parse_key_entry(e) for e in raw)

    def __len__(self) -> int:
        return len(self._keys)

    def lookup(self, presented: str) -> ApiKey | None:
        digest = _digest(presented)
        found = None
        # Every digest is compared, matched or not, so timing says nothing.
        for key in self._keys:
            if hmac.compare_digest(key.digest, digest):
                found = key
        return found

    def by_name(self, name: str) -> ApiKey | None:
        return next((k for k in self._keys if k.name == name), None)


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _mask(token: str) -> str:
    return f"{token[:3]}***{token[-3:]}" if len(token) > 8 else "***"


@dataclass(frozen=True, slots=True)
class AuthPolicy:
    store: KeyStore
    protect_models: bool
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    identity_header: str
    verify_without_keys: bool = False

    @property
    def enabled(self) -> bool:
        return len(self.store) > 0

    def trusts(self, peer: str | None) -> bool:
        if not peer or not self.trusted_proxies:
            return False
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(address in network for network in self.trusted_proxies)

    def authenticate(self, request: web.Request) -> ApiKey:
        """The caller's key, or AuthenticationFailed (401).

        A trusted proxy may name the key in the identity header instead of
        passing the bearer token; a name that is not a configured key is
        refused, never served as an uncapped stranger.
        """
        if self.trusts(request.remote):
            name = request.headers.get(self.identity_header)
            if name:
                forwarded = self.store.by_name(name)
                if forwarded is None:
                    raise AuthenticationFailed(
                        f"The {self.identity_header} header from the proxy names no configured "
                        "API key."
                    )
                return forwarded
        return self.authenticate_bearer(request)

    def authenticate_bearer(self, request: web.Request) -> ApiKey:
        """The key of the request's bearer token, or AuthenticationFailed (401)."""
        token = bearer_token(request)
        if token is None:
            raise AuthenticationFailed(_MISSING, code=None)
        key = self.store.lookup(token)
        if key is None:
            raise AuthenticationFailed(
                f"Incorrect API key provided: {_mask(token)}. Check the key and try again."
            )
        return key

    def protects(self, path: str) -> bool:
        """Whether `path` needs a key: everything but the listed public routes (fail closed)."""
        if path in PUBLIC_PATHS:
            return False
        if path == "/v1/models" or path.startswith("/v1/models/"):
            return self.protect_models
        return True


API_KEY: Final = web.RequestKey("api_key", ApiKey)
AUTH: Final = web.AppKey("auth", AuthPolicy)


@web.middleware
async def auth_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Runs before any handler reads the request body: a caller without a key costs no upload."""
    policy = request.app[AUTH]
    if policy.enabled and policy.protects(request.path):
        key = policy.authenticate(request)
        request[API_KEY] = key
        request[ACCESS].key_name = key.name
    response: web.StreamResponse = await handler(request)
    return response


def _forwarded_path(request: web.Request) -> str | None:
    """The path of the request Traefik asks about, or None when it is absent or unreadable."""
    uri = request.headers.get(FORWARDED_URI_HEADER)
    if not uri:
        return None
    try:
        path = unquote(urlsplit(uri).path)
    except ValueError:
        return None
    if not path.startswith("/"):
        return None
    # "/v1/models/../chat/completions" is a chat request, whatever its prefix.
    return posixpath.normpath(re.sub("/+", "/", path))


async def verify(request: web.Request) -> web.Response:
    """Traefik ForwardAuth: 204 with the key's identity headers, or 401/403 in the OpenAI envelope.

    Only the bearer token counts here: the identity header is what this
    answer hands to Traefik, so believing it would let any caller on a
    trusted address name any key.
    """
    policy = request.app[AUTH]
    if not policy.enabled:
        if not policy.verify_without_keys:
            raise PermissionDenied(
                "No API keys are configured, so /auth/verify cannot tell callers apart and "
                "refuses every request. Configure auth.api_keys or auth.keys_file, or set "
                "auth.verify_without_keys = true to approve every request."
            )
        return web.Response(status=204, headers={KEY_NAME_HEADER: "anonymous"})
    path = _forwarded_path(request)
    if path is not None and not policy.protects(path):
        # A route the bridge serves without a key (e.g. /v1/models with
        # protect_models off): no identity to vouch for.
        return web.Response(status=204)
    key = policy.authenticate_bearer(request)
    request[ACCESS].key_name = key.name
    return web.Response(
        status=204, headers={KEY_NAME_HEADER: key.name, KEY_ID_HEADER: key.fingerprint}
    )


LOOPBACK_PEERS: Final = frozenset({"127.0.0.1", "::1"})


def metrics_guard(access: str, handler: Any) -> Any:
    """Wraps the /metrics handler: loopback peers only, API-key holders, or anyone."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        if access == "loopback" and request.remote not in LOOPBACK_PEERS:
            raise PermissionDenied("/metrics is served to loopback peers only.")
        if access == "key":
            policy = request.app[AUTH]
            if policy.enabled:
                policy.authenticate(request)
        response: web.StreamResponse = await handler(request)
        return response

    return guarded


def build_policy(settings: Any, env: Mapping[str, str] | None = None) -> AuthPolicy:
    auth = settings.auth
    store = KeyStore.from_sources(auth.api_keys, auth.keys_file, os.environ if env is None else env)
    return AuthPolicy(
        store=store,
        protect_models=auth.protect_models,
        trusted_proxies=tuple(ipaddress.ip_network(c, strict=False) for c in auth.trusted_proxies),
        identity_header=auth.identity_header,
        verify_without_keys=auth.verify_without_keys,
    )


async def add_ratelimit_headers(request: web.Request, response: web.StreamResponse) -> None:
    """OpenAI-style request limits, where they mean something: a key's concurrency cap."""
    key = request.get(API_KEY)
    if key is None or key.max_concurrent is None:
        return
    in_use = request.app[KEY_LIMITS].in_use(key.name)
    response.headers["x-ratelimit-limit-requests"] = str(key.max_concurrent)
    response.headers["x-ratelimit-remaining-requests"] = str(max(0, key.max_concurrent - in_use))
