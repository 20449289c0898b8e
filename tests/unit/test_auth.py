"""API key parsing, hashing and the trusted-proxy rule (no network)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from bridge.ops.auth import AuthPolicy, KeyFormatError, KeyStore, parse_key_entry


def test_key_entries_parse_with_optional_name_and_limit() -> None:
    plain = parse_key_entry("sk-abcdefgh", default_name="key1")
    named = parse_key_entry("ci:sk-abcdefgh", default_name="key2")
    limited = parse_key_entry("ide:sk-abcdefgh:3", default_name="key3")
    assert (plain.name, plain.max_concurrent) == ("key1", None)
    assert named.name == "ci"
    assert limited.max_concurrent == 3
    assert plain.fingerprint == named.fingerprint  # same key, same fingerprint
    assert "sk-abcdefgh" not in repr(limited)


@pytest.mark.parametrize("entry", ["short", "a:b:c:d", "n:sk-abcdefgh:zero", "n:sk-abcdefgh:0"])
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
