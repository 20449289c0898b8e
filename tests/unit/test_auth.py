"""API key parsing, hashing, the trusted-proxy rule and /auth/verify's decisions (no network)."""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from bridge.config import ConfigError
from bridge.errors import AuthenticationFailed, PermissionDenied
from bridge.ops.access import ACCESS, AccessRecord
from bridge.ops.auth import AUTH, AuthPolicy, KeyFormatError, KeyStore, parse_key_entry, verify
from bridge.ops.usage import row_for
from bridge.server import run
from bridge.store import ANONYMOUS_OWNER
from tests.harness import bridge_test_settings


def test_key_entries_parse_with_optional_name_and_limit() -> None:
    plain = parse_key_entry("sk-abcdefgh")
    named = parse_key_entry("ci:sk-abcdefgh")
    limited = parse_key_entry("ide:sk-abcdefgh:3")
    assert (plain.name, plain.max_concurrent) == (f"key-{plain.fingerprint}", None)
    assert named.name == "ci"
    assert limited.max_concurrent == 3
    assert plain.fingerprint == named.fingerprint  # same key, same fingerprint
    assert "sk-abcdefgh" not in repr(limited)


@pytest.mark.parametrize(
    "entry", ["short", "a:b:c:d", "n:sk-abcdefgh:zero", "n:sk-abcdefgh:0", ":sk-abcdefgh"]
)
def test_bad_key_entries_are_rejected(entry: str) -> None:
    with pytest.raises(KeyFormatError):
        parse_key_entry(entry, default_name="k")


def test_store_finds_keys_by_value_only(tmp_path: Path) -> None:
    keys_file = tmp_path / "api-keys"
    keys_file.write_text("# comment\n\nfile-key:sk-from-file-123\n")
    store = KeyStore.from_sources(["env:sk-from-env-123"], str(keys_file), {})
    assert len(store) == 2
    found = store.lookup("sk-from-file-123")
    assert found is not None and found.name == "file-key"
    assert store.lookup("sk-from-file-12") is None
    assert store.lookup("") is None


def test_systemd_credentials_directory_supplies_the_keys_file(tmp_path: Path) -> None:
    (tmp_path / "api-keys").write_text("cred:sk-credential-1\n")
    store = KeyStore.from_sources([], None, {"CREDENTIALS_DIRECTORY": str(tmp_path)})
    found = store.lookup("sk-credential-1")
    assert found is not None and found.name == "cred"


def test_identity_header_is_trusted_only_from_configured_proxies() -> None:
    policy = AuthPolicy(
        store=KeyStore([]),
        protect_models=True,
        trusted_proxies=(ipaddress.ip_network("10.0.0.0/24"),),
        identity_header="X-Bridge-Key-Name",
    )
    assert policy.trusts("10.0.0.7")
    assert not policy.trusts("10.0.1.7")
    assert not policy.trusts("127.0.0.1")
    assert not policy.trusts(None)
    assert policy.protects("/v1/chat/completions")
    assert policy.protects("/v1/models")
    assert not policy.protects("/healthz")


# --- identity header, /auth/verify, and the public paths (issue 8, item 7) -----------------

ALICE_KEY = "sk-alice-0123456789"


def _policy(**overrides: object) -> AuthPolicy:
    values: dict[str, object] = {
        "store": KeyStore([parse_key_entry(f"alice:{ALICE_KEY}:2", default_name="k")]),
        "protect_models": True,
        "trusted_proxies": (ipaddress.ip_network("10.0.0.0/24"),),
        "identity_header": "X-Bridge-Key-Name",
    }
    values.update(overrides)
    return AuthPolicy(**values)  # type: ignore[arg-type]


def _request(path: str, headers: dict[str, str], *, remote: str, policy: AuthPolicy) -> web.Request:
    app = web.Application()
    app[AUTH] = policy
    request = make_mocked_request("GET", path, headers=headers, app=app).clone(remote=remote)
    request[ACCESS] = AccessRecord(request_id="req_test", started=0.0)
    return request


def test_identity_header_naming_an_unknown_key_is_refused_even_from_a_trusted_proxy() -> None:
    policy = _policy()
    known = _request(
        "/v1/chat/completions", {"X-Bridge-Key-Name": "alice"}, remote="10.0.0.7", policy=policy
    )
    assert policy.authenticate(known).max_concurrent == 2  # the named key's cap applies
    stranger = _request(
        "/v1/chat/completions",
        {"X-Bridge-Key-Name": "nobody-at-all"},
        remote="10.0.0.7",
        policy=policy,
    )
    with pytest.raises(AuthenticationFailed) as caught:
        policy.authenticate(stranger)
    assert caught.value.headers()["WWW-Authenticate"].startswith("Bearer")


async def test_verify_authenticates_the_bearer_token_and_never_the_identity_header() -> None:
    policy = _policy()
    named_only = _request(
        "/auth/verify", {"X-Bridge-Key-Name": "alice"}, remote="10.0.0.7", policy=policy
    )
    with pytest.raises(AuthenticationFailed):
        await verify(named_only)
    bearer = _request(
        "/auth/verify", {"Authorization": f"Bearer {ALICE_KEY}"}, remote="10.0.0.7", policy=policy
    )
    answer = await verify(bearer)
    assert answer.status == 204
    assert answer.headers["X-Bridge-Key-Name"] == "alice"


async def test_verify_without_keys_refuses_unless_the_operator_opts_in() -> None:
    refusing = _policy(store=KeyStore([]))
    with pytest.raises(PermissionDenied) as caught:
        await verify(_request("/auth/verify", {}, remote="127.0.0.1", policy=refusing))
    assert "verify_without_keys" in caught.value.message
    approving = _policy(store=KeyStore([]), verify_without_keys=True)
    answer = await verify(_request("/auth/verify", {}, remote="127.0.0.1", policy=approving))
    assert answer.status == 204


@pytest.mark.parametrize(
    ("forwarded_uri", "protect_models", "status"),
    [
        ("/v1/models", False, 204),
        ("/v1/models/codex-demo?x=1", False, 204),
        ("/v1/models", True, 401),
        ("/v1/models/../chat/completions", False, 401),
        ("//v1/chat/completions", False, 401),
        ("/v1/chat/completions", False, 401),
        (None, False, 401),
    ],
)
async def test_verify_applies_protect_models_to_the_forwarded_uri(
    forwarded_uri: str | None, protect_models: bool, status: int
) -> None:
    policy = _policy(protect_models=protect_models)
    headers = {"X-Forwarded-Uri": forwarded_uri} if forwarded_uri is not None else {}
    request = _request("/auth/verify", headers, remote="127.0.0.1", policy=policy)
    try:
        answer = await verify(request)
    except AuthenticationFailed as exc:
        assert status == exc.status
    else:
        assert answer.status == status
        assert "X-Bridge-Key-Name" not in answer.headers  # no identity vouched for


def test_every_path_but_the_public_ones_needs_a_key() -> None:
    policy = _policy(protect_models=False)
    for path in ("/v1/chat/completions", "//v1/chat/completions", "/v2/anything", "/"):
        assert policy.protects(path), path
    for path in ("/healthz", "/readyz", "/metrics", "/auth/verify", "/v1/models"):
        assert not policy.protects(path), path


# --- one owner per key: names unique and stable (review item 1) ---------------------------

STARTUP_BOUND_S = 60.0


def test_unnamed_keys_keep_their_names_when_another_entry_is_removed() -> None:
    before = KeyStore.from_sources(["key3:sk-aaaaaaaa", "sk-bbbbbbbb", "sk-cccccccc"], None, {})
    after = KeyStore.from_sources(["key3:sk-aaaaaaaa", "sk-cccccccc"], None, {})
    names = {
        k.name
        for k in (before.lookup(s) for s in ("sk-aaaaaaaa", "sk-bbbbbbbb", "sk-cccccccc"))
        if k
    }
    assert len(names) == 3  # the explicit key3 and the unnamed third key no longer collide
    c_before, c_after = before.lookup("sk-cccccccc"), after.lookup("sk-cccccccc")
    assert c_before is not None and c_after is not None
    assert c_before.name == c_after.name == f"key-{c_before.fingerprint}"


@pytest.mark.parametrize(
    "entries",
    [
        ["ci:sk-aaaaaaaa", "ci:sk-bbbbbbbb"],
        ["ci:sk-aaaaaaaa", "other:sk-aaaaaaaa"],  # one key under two names
    ],
)
def test_loading_keys_fails_as_a_config_error_when_names_or_keys_repeat(
    entries: list[str], tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as raised:
        KeyStore.from_sources(entries, None, {})
    assert "sk-aaaaaaaa" not in str(raised.value)


def test_duplicate_key_names_across_env_and_keys_file_are_refused(tmp_path: Path) -> None:
    keys_file = tmp_path / "api-keys"
    keys_file.write_text("ci:sk-from-file-123\n")
    with pytest.raises(KeyFormatError, match="'ci'"):
        KeyStore.from_sources(["ci:sk-from-env-123"], str(keys_file), {})


async def test_startup_exits_2_when_two_keys_share_a_name(tmp_path: Path) -> None:
    settings = bridge_test_settings(
        tmp_path / "home", **{"auth.api_keys": ["ci:sk-aaaaaaaa", "ci:sk-bbbbbbbb"]}
    )
    # Bounded: without the check the bridge would start and wait for a stop.
    assert await asyncio.wait_for(run(settings, stop=asyncio.Event()), STARTUP_BOUND_S) == 2


def test_usage_rows_of_anonymous_callers_use_the_store_owner_never_a_key_name() -> None:
    anonymous = row_for(AccessRecord(request_id="r", started=0.0, model="m", turns=1), "e", 200)
    named = row_for(
        AccessRecord(request_id="r", started=0.0, model="m", turns=1, key_name="anonymous"),
        "e",
        200,
    )
    assert anonymous is not None and named is not None
    assert anonymous.key_name == ANONYMOUS_OWNER
    assert named.key_name != anonymous.key_name
