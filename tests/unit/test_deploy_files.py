"""The deployment artefacts under deploy/ say what operators and tools expect.

Traefik rejects an unknown option in a dynamic file ("field not found") and
drops the whole file, so the Traefik config is checked against the option names
Traefik documents. Prometheus files are checked for the shape promtool and
Alertmanager need, and for the bridge's real metric names. The unit file is read
like an INI file for the settings the bridge depends on; scripts/verify-deploy
runs systemd-analyze on it as well.
"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final

import pytest
import yaml

REPO: Final = Path(__file__).resolve().parents[2]
DEPLOY: Final = REPO / "deploy"
TRAEFIK_FILE: Final = DEPLOY / "traefik" / "codex-bridge.yml"
SCRAPE_FILE: Final = DEPLOY / "prometheus" / "scrape.yml"
ALERTS_FILE: Final = DEPLOY / "prometheus" / "alerts.yml"
UNIT_FILE: Final = DEPLOY / "systemd" / "codex-bridge.service"
ENV_EXAMPLE: Final = DEPLOY / "systemd" / "codex-bridge.env.example"
VERIFY_SCRIPT: Final = REPO / "scripts" / "verify-deploy"

BRIDGE_ADDRESS: Final = "127.0.0.1:8140"
# systemd-analyze verify takes about a second; bound it anyway.
VERIFY_TIMEOUT_S: Final = 60.0

# --- Traefik option names ----------------------------------------------------------
# From the Traefik v3 routing reference (doc.traefik.io/traefik/reference/
# routing-configuration/http/...: routing/router, middlewares/forwardauth,
# middlewares/headers, load-balancing/service), cross-checked with the structs in
# traefik/traefik pkg/config/dynamic. Traefik's file provider (traefik/paerser)
# matches option names case-insensitively, and the docs spell some both ways
# ("healthCheck"/"healthcheck"), so comparisons below ignore case.

TRAEFIK_TOP_KEYS: Final = {"http", "tcp", "udp", "tls"}
TRAEFIK_HTTP_KEYS: Final = {"routers", "middlewares", "services", "serversTransports"}
ROUTER_KEYS: Final = {
    "entryPoints",
    "rule",
    "ruleSyntax",  # deprecated in v3, still accepted
    "priority",
    "middlewares",
    "service",
    "tls",
    "observability",
    "parentRefs",
}
ROUTER_TLS_KEYS: Final = {"certResolver", "options", "domains"}
FORWARD_AUTH_KEYS: Final = {
    "address",
    "tls",
    "trustForwardHeader",
    "authResponseHeaders",
    "authResponseHeadersRegex",
    "authRequestHeaders",
    "addAuthCookiesToResponse",
    "forwardBody",
    "maxBodySize",
    "maxResponseBodySize",
    "headerField",
    "preserveLocationHeader",
    "preserveRequestMethod",
    "authSigninURL",
}
HEADERS_KEYS: Final = {
    "customRequestHeaders",
    "customResponseHeaders",
    "accessControlAllowCredentials",
    "accessControlAllowHeaders",
    "accessControlAllowMethods",
    "accessControlAllowOriginList",
    "accessControlAllowOriginListRegex",
    "accessControlExposeHeaders",
    "accessControlMaxAge",
    "addVaryHeader",
    "allowedHosts",
    "hostsProxyHeaders",
    "sslProxyHeaders",
    "stsSeconds",
    "stsIncludeSubdomains",
    "stsPreload",
    "forceSTSHeader",
    "frameDeny",
    "customFrameOptionsValue",
    "contentTypeNosniff",
    "browserXssFilter",
    "customBrowserXSSValue",
    "contentSecurityPolicy",
    "contentSecurityPolicyReportOnly",
    "publicKey",
    "referrerPolicy",
    "permissionsPolicy",
    "isDevelopment",
}
# The middleware kinds this file may use; compress in particular must not appear.
MIDDLEWARE_KINDS: Final = {"forwardAuth": FORWARD_AUTH_KEYS, "headers": HEADERS_KEYS}
LOAD_BALANCER_KEYS: Final = {
    "servers",
    "strategy",
    "sticky",
    "healthCheck",
    "passiveHealthCheck",
    "passHostHeader",
    "serversTransport",
    "responseForwarding",
}
LB_SERVER_KEYS: Final = {"url", "weight", "preservePath"}
HEALTH_CHECK_KEYS: Final = {
    "scheme",
    "mode",
    "path",
    "method",
    "status",
    "port",
    "interval",
    "unhealthyInterval",
    "timeout",
    "hostname",
    "followRedirects",
    "headers",
}
RESPONSE_FORWARDING_KEYS: Final = {"flushInterval"}

# --- Prometheus ---------------------------------------------------------------------

BRIDGE_METRICS: Final = {
    "codex_bridge_http_requests_total",
    "codex_bridge_http_request_duration_seconds",
    "codex_bridge_time_to_first_token_seconds",
    "codex_bridge_workers_ready",
    "codex_bridge_worker_restarts_total",
    "codex_bridge_inflight_turns",
    "codex_bridge_queue_depth",
    "codex_bridge_admission_rejections_total",
}
HISTOGRAM_SUFFIXES: Final = ("_bucket", "_sum", "_count")
SEVERITIES: Final = {"critical", "warning"}

# --- systemd ------------------------------------------------------------------------

# BRIDGE_SHUTDOWN_TIMEOUT_S default, and the worker close grace the unit allows for.
DRAIN_DEADLINE_S: Final = 30
WORKER_CLOSE_GRACE_S: Final = 10


def _load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def _unknown_keys(section: Mapping[str, Any], allowed: set[str]) -> set[str]:
    folded = {name.casefold() for name in allowed}
    return {key for key in section if key.casefold() not in folded}


def _get(section: Mapping[str, Any], key: str) -> Any:
    """Case-insensitive lookup, as Traefik does it."""
    matches = [value for name, value in section.items() if name.casefold() == key.casefold()]
    assert len(matches) == 1, f"{key!r}: expected exactly one, found {len(matches)}"
    return matches[0]


@pytest.fixture(scope="module")
def traefik() -> dict[str, Any]:
    config = _load_yaml(TRAEFIK_FILE)
    assert isinstance(config, dict)
    return config


# --- Traefik ------------------------------------------------------------------------


def test_traefik_file_uses_only_documented_option_names(traefik: dict[str, Any]) -> None:
    assert _unknown_keys(traefik, TRAEFIK_TOP_KEYS) == set()
    http = traefik["http"]
    assert _unknown_keys(http, TRAEFIK_HTTP_KEYS) == set()

    for name, router in http["routers"].items():
        assert _unknown_keys(router, ROUTER_KEYS) == set(), name
        if "tls" in router:
            assert _unknown_keys(router["tls"] or {}, ROUTER_TLS_KEYS) == set(), name

    for name, middleware in http["middlewares"].items():
        assert len(middleware) == 1, f"{name}: one middleware kind per entry"
        ((kind, options),) = middleware.items()
        assert kind in MIDDLEWARE_KINDS, f"{name}: unexpected middleware kind {kind!r}"
        assert _unknown_keys(options, MIDDLEWARE_KINDS[kind]) == set(), name

    for name, service in http["services"].items():
        assert set(service) == {"loadBalancer"}, name
        balancer = service["loadBalancer"]
        assert _unknown_keys(balancer, LOAD_BALANCER_KEYS) == set(), name
        for server in _get(balancer, "servers"):
            assert _unknown_keys(server, LB_SERVER_KEYS) == set(), name
        assert _unknown_keys(_get(balancer, "healthCheck"), HEALTH_CHECK_KEYS) == set(), name
        forwarding = _get(balancer, "responseForwarding")
        assert _unknown_keys(forwarding, RESPONSE_FORWARDING_KEYS) == set(), name


def test_traefik_router_routes_only_the_v1_api_through_auth(traefik: dict[str, Any]) -> None:
    http = traefik["http"]
    ((router),) = http["routers"].values()
    assert "PathPrefix(`/v1`)" in router["rule"]
    assert "/auth" not in router["rule"]
    assert router["service"] in http["services"]
    assert router["middlewares"], "the router must authenticate"
    assert all(name in http["middlewares"] for name in router["middlewares"])
    first = http["middlewares"][router["middlewares"][0]]
    assert "forwardAuth" in first, "authentication runs before any other middleware"


def test_traefik_forward_auth_calls_the_bridge_and_passes_the_verified_key(
    traefik: dict[str, Any],
) -> None:
    (forward_auth,) = [
        entry["forwardAuth"]
        for entry in traefik["http"]["middlewares"].values()
        if "forwardAuth" in entry
    ]
    assert forward_auth["address"] == f"http://{BRIDGE_ADDRESS}/auth/verify"
    assert forward_auth["authRequestHeaders"] == ["Authorization", "X-Request-Id"]
    assert forward_auth["authResponseHeaders"] == ["X-Bridge-Key-Name", "X-Bridge-Key-Id"]
    assert forward_auth.get("trustForwardHeader", False) is False


def test_traefik_headers_disable_proxy_buffering_for_sse(traefik: dict[str, Any]) -> None:
    (headers,) = [
        entry["headers"] for entry in traefik["http"]["middlewares"].values() if "headers" in entry
    ]
    # A string: unquoted `no` is YAML 1.1 for False.
    assert headers["customResponseHeaders"]["X-Accel-Buffering"] == "no"


def test_traefik_file_has_no_compress_middleware() -> None:
    assert "compress" not in {
        kind.casefold()
        for entry in _load_yaml(TRAEFIK_FILE)["http"]["middlewares"].values()
        for kind in entry
    }


def test_traefik_service_health_checks_readyz_on_the_bridge(traefik: dict[str, Any]) -> None:
    ((service),) = traefik["http"]["services"].values()
    balancer = service["loadBalancer"]
    assert [server["url"] for server in balancer["servers"]] == [f"http://{BRIDGE_ADDRESS}"]
    assert _get(balancer, "healthCheck")["path"] == "/readyz"


# --- Prometheus ---------------------------------------------------------------------


def test_scrape_config_scrapes_the_bridge_metrics_endpoint() -> None:
    config = _load_yaml(SCRAPE_FILE)
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "codex-bridge"
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [target for group in job["static_configs"] for target in group["targets"]]
    assert targets == [BRIDGE_ADDRESS]


def _alert_rules() -> Iterator[dict[str, Any]]:
    config = _load_yaml(ALERTS_FILE)
    for group in config["groups"]:
        assert group["name"]
        yield from group["rules"]


def _rule_by_name() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for rule in _alert_rules()}


def test_every_alert_has_expr_for_severity_and_summary() -> None:
    rules = list(_alert_rules())
    assert rules
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
        assert rule["alert"] and rule["expr"], rule
        assert re.fullmatch(r"\d+[smh]", str(rule["for"])), rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]


def test_alerts_use_only_the_bridge_metric_names() -> None:
    for rule in _alert_rules():
        for name in re.findall(r"\bcodex_bridge_[a-z0-9_]+", rule["expr"]):
            base = name
            for suffix in HISTOGRAM_SUFFIXES:
                base = base.removesuffix(suffix)
            assert name in BRIDGE_METRICS or base in BRIDGE_METRICS, (rule["alert"], name)


def test_alerts_cover_workers_restarts_429s_5xx_and_ttft() -> None:
    exprs = {name: " ".join(rule["expr"].split()) for name, rule in _rule_by_name().items()}
    fors = {name: rule["for"] for name, rule in _rule_by_name().items()}

    def find(*fragments: str) -> str:
        (name,) = [n for n, e in exprs.items() if all(f in e for f in fragments)]
        return name

    assert fors[find("codex_bridge_workers_ready == 0")] == "1m"
    find("increase(codex_bridge_worker_restarts_total[10m])", "> 5")
    find('codex_bridge_http_requests_total{status="429"}[5m]', "/")
    find('codex_bridge_http_requests_total{status=~"5.."}[5m]', "/")
    find(
        "histogram_quantile(0.9,",
        "sum by (le) (rate(codex_bridge_time_to_first_token_seconds_bucket[5m]))",
        "> 10",
    )


# --- systemd ------------------------------------------------------------------------


def _unit_parser() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(
        strict=False,  # systemd allows repeated keys (Environment=)
        interpolation=None,
        comment_prefixes=("#", ";"),
        inline_comment_prefixes=None,  # systemd has none either
        delimiters=("=",),
    )
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read(UNIT_FILE, encoding="utf-8")
    return parser


def _unit_entries() -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment, repeated keys included."""
    entries: list[tuple[str, str, str]] = []
    section = ""
    for raw in UNIT_FILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not an assignment: {raw!r}"
        entries.append((section, key.strip(), value.strip()))
    return entries


def test_unit_file_has_the_required_service_settings() -> None:
    service = _unit_parser()["Service"]
    expected = {
        "Type": "notify",
        "NotifyAccess": "main",
        "WatchdogSec": "30",
        "Restart": "on-failure",
        "StateDirectory": "codex-bridge",
        "DynamicUser": "yes",
        "KillMode": "mixed",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "RestrictNamespaces": "no",
        "EnvironmentFile": "-/etc/codex-bridge/codex-bridge.env",
        "ExecStart": (
            "/opt/codex-bridge/.venv/bin/codex-bridge serve --config /etc/codex-bridge/config.toml"
        ),
    }
    assert {key: service.get(key) for key in expected} == expected


def test_unit_file_sets_codex_home_in_the_state_directory() -> None:
    environment = [value for section, key, value in _unit_entries() if key == "Environment"]
    assert "BRIDGE_CODEX_HOME=/var/lib/codex-bridge/codex-home" in environment


def test_unit_stop_timeout_outlasts_the_drain_and_worker_close() -> None:
    timeout_stop = _unit_parser()["Service"]["TimeoutStopSec"]
    assert timeout_stop.isdigit(), "plain seconds keep this check simple"
    assert int(timeout_stop) > DRAIN_DEADLINE_S + WORKER_CLOSE_GRACE_S


def test_unit_hardening_leaves_the_codex_bubblewrap_sandbox_working() -> None:
    service = _unit_parser()["Service"]
    # Each of these broke bwrap when tried (see the comments in the unit).
    assert "ProcSubset" not in service
    assert "ProtectKernelTunables" not in service
    assert "ProtectKernelLogs" not in service
    allowed_syscalls = service["SystemCallFilter"].split()
    assert {"@system-service", "@mount", "seccomp"} <= set(allowed_syscalls)


def test_unit_file_has_no_inline_comments_or_repeated_single_value_keys() -> None:
    entries = _unit_entries()
    for _, key, value in entries:
        assert " #" not in value and " ;" not in value, f"{key}: systemd has no inline comments"
    repeatable = {"Environment", "ExecStartPre", "ExecStartPost", "LoadCredential"}
    keys = [(section, key) for section, key, _ in entries if key not in repeatable]
    assert len(keys) == len(set(keys))
    assert ("Install", "WantedBy") in keys


def test_env_example_documents_the_bridge_settings_all_commented_out() -> None:
    lines = ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
    assert all(not line.strip() or line.startswith("#") for line in lines)
    documented = {
        match.group(1) for line in lines if (match := re.match(r"#(BRIDGE_[A-Z0-9_]+)=", line))
    }
    assert documented >= {
        "BRIDGE_HOST",
        "BRIDGE_PORT",
        "BRIDGE_WORKERS",
        "BRIDGE_CODEX_PROFILE",
        "BRIDGE_CODEX_CONFIG",
        "BRIDGE_MODELS",
        "BRIDGE_LOG_LEVEL",
        "BRIDGE_API_KEYS",
    }


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_unit_file_passes_systemd_analyze_verify() -> None:
    result = subprocess.run(
        [str(VERIFY_SCRIPT), "--require"],
        capture_output=True,
        text=True,
        timeout=VERIFY_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
