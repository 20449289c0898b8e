"""Prometheus metrics: one private registry per app, bounded label sets only.

Labels are route templates, status codes, endpoint names, configured model
ids, token kinds, worker ids and fixed reason strings — never request ids,
raw paths or keys. Pool gauges are read at scrape time from the pool itself,
so they cannot drift from the truth. Hot paths do not touch metrics per
delta: turns are counted once when they end.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bridge.codex.account import AccountState
from bridge.worker.pool import WorkerPool
from bridge.worker.supervisor import RECYCLE_PREFIX

# LLM-shaped buckets: the default ones stop at 10 s, too short for agent turns.
LATENCY_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300, 900)
QUEUE_BUCKETS: Final = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)
HANDSHAKE_BUCKETS: Final = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30)
# Events waiting for a request at once; the top buckets are slow clients
# nearing `codex.max_queued_events` (default 4096, minimum 16).
BACKLOG_BUCKETS: Final = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536)


class _PoolCollector(Collector):
    def __init__(self, pool: Callable[[], WorkerPool | None]) -> None:
        self._pool = pool

    def collect(self) -> Iterator[Metric]:
        pool = self._pool()
        if pool is None:
            return
        ready = GaugeMetricFamily(
            "codex_bridge_workers_ready", "Workers that completed the handshake and take turns."
        )
        ready.add_metric([], pool.ready_count)
        yield ready
        states = GaugeMetricFamily(
            "codex_bridge_workers", "Workers by supervisor state.", labels=["state"]
        )
        counts: dict[str, int] = {
            "starting": 0,
            "ready": 0,
            "probing": 0,
            "draining": 0,
            "restarting": 0,
            "stopped": 0,
        }
        for worker in pool.workers:
            counts[worker.state.value] += 1
        for state, count in counts.items():
            states.add_metric([state], count)
        yield states
        inflight = GaugeMetricFamily("codex_bridge_inflight_turns", "Turns running now.")
        inflight.add_metric([], pool.active_turns)
        yield inflight
        queued = GaugeMetricFamily("codex_bridge_queue_depth", "Requests waiting for a turn slot.")
        queued.add_metric([], pool.waiting)
        yield queued
        dialects = GaugeMetricFamily(
            "codex_bridge_worker_dialect",
            "1 for the app-server protocol each ready worker speaks.",
            labels=["worker", "dialect"],
        )
        for worker in pool.workers:
            if worker.ready:
                dialects.add_metric([str(worker.id), worker.dialect], 1)
        yield dialects
        per_worker = GaugeMetricFamily(
            "codex_bridge_worker_active_turns", "Turns running per worker.", labels=["worker"]
        )
        for worker in pool.workers:
            per_worker.add_metric([str(worker.id)], worker.active_turns)
        yield per_worker
        limits = GaugeMetricFamily(
            "codex_bridge_worker_turn_limit",
            "Each worker's adaptive concurrency limit (halved on overload, +1 after successes).",
            labels=["worker"],
        )
        for worker in pool.workers:
            limits.add_metric([str(worker.id)], pool.turn_limit(worker))
        yield limits


class _AccountCollector(Collector):
    """The Codex accounts, read at scrape time: sign-in, usability, rate-limit windows.

    Labels: the account name (`codex.accounts`, at most 16; "default" without
    it), Codex's limit ids (a handful per plan) and primary/secondary."""

    def __init__(self, accounts: Callable[[], dict[str, AccountState]]) -> None:
        self._accounts = accounts

    def collect(self) -> Iterator[Metric]:
        accounts = self._accounts()
        if not accounts:
            return
        signed_in = GaugeMetricFamily(
            "codex_bridge_account_signed_in",
            "1 when Codex has an account, 0 when not (see codex_bridge_account_usable).",
            labels=["account"],
        )
        usable = GaugeMetricFamily(
            "codex_bridge_account_usable",
            "0 while turns cannot reach the model for an account reason (the `reason` label).",
            labels=["account", "reason"],
        )
        used = GaugeMetricFamily(
            "codex_bridge_rate_limit_used_percent",
            "Used share of each Codex rate-limit window, from the provider's headers.",
            labels=["account", "limit", "window"],
        )
        minutes = GaugeMetricFamily(
            "codex_bridge_rate_limit_window_minutes",
            "Length of each Codex rate-limit window.",
            labels=["account", "limit", "window"],
        )
        resets = GaugeMetricFamily(
            "codex_bridge_rate_limit_resets_at_seconds",
            "When each Codex rate-limit window resets (Unix time).",
            labels=["account", "limit", "window"],
        )
        resting = GaugeMetricFamily(
            "codex_bridge_account_resting_until_seconds",
            "Until when the account rests at its usage limit (Unix time; 0: it does not), "
            "as found by this instance or any instance sharing the store.",
            labels=["account"],
        )
        for name, account in accounts.items():
            signed_in.add_metric([name], 1 if account.account_type is not None else 0)
            resting.add_metric([name], account.usage_reset_at() or 0)
            usable.add_metric([name, account.reason or "ok"], 0 if account.reason else 1)
            for w in account.windows():
                labels = [name, w.limit_id, w.window]
                used.add_metric(labels, w.used_percent)
                if w.window_minutes is not None:
                    minutes.add_metric(labels, w.window_minutes)
                if w.resets_at is not None:
                    resets.add_metric(labels, w.resets_at)
        yield signed_in
        yield usable
        yield resting
        yield used
        yield minutes
        yield resets


class Metrics:
    def __init__(self, *, version: str, codex_version: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self._pool: WorkerPool | None = None
        r.register(_PoolCollector(lambda: self._pool))
        self._accounts: dict[str, AccountState] = {}
        r.register(_AccountCollector(lambda: self._accounts))
        Info("codex_bridge_build", "Bridge and Codex versions.", registry=r).info(
            {"version": version, "codex_version": codex_version}
        )
        self.http_requests = Counter(
            "codex_bridge_http_requests",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.http_duration = Histogram(
            "codex_bridge_http_request_duration_seconds",
            "Whole request time, streams included.",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "codex_bridge_time_to_first_token_seconds",
            "From request start to the first reply text.",
            ["endpoint", "stream"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.turn_duration = Histogram(
            "codex_bridge_turn_duration_seconds",
            "Turn time by endpoint and outcome.",
            ["endpoint", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "codex_bridge_tokens",
            "Tokens by kind (prompt, completion, cached, reasoning) and model.",
            ["kind", "model"],
            registry=r,
        )
        self.event_backlog = Histogram(
            "codex_bridge_turn_event_backlog",
            "Most turn events that waited for their request at once, per turn.",
            ["endpoint"],
            buckets=BACKLOG_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "codex_bridge_queue_wait_seconds",
            "Time a request waited for a turn slot.",
            buckets=QUEUE_BUCKETS,
            registry=r,
        )
        self.rejections = Counter(
            "codex_bridge_admission_rejections",
            "Requests refused before running, by reason.",
            ["reason"],
            registry=r,
        )
        self.worker_restarts = Counter(
            "codex_bridge_worker_restarts",
            "Unplanned worker restarts by reason (recycles are counted apart).",
            ["reason"],
            registry=r,
        )
        self.worker_recycles = Counter(
            "codex_bridge_worker_recycles",
            "Planned worker restarts after draining, by the bound that was reached"
            " (max_turns, max_rss).",
            ["reason"],
            registry=r,
        )
        self.handshake_seconds = Histogram(
            "codex_bridge_worker_handshake_seconds",
            "Spawn to completed initialize handshake.",
            buckets=HANDSHAKE_BUCKETS,
            registry=r,
        )
        self.rpc_errors = Counter(
            "codex_bridge_rpc_errors",
            "JSON-RPC requests to workers that failed, by method and kind.",
            ["method", "kind"],
            registry=r,
        )
        self.worker_overloads = Counter(
            "codex_bridge_worker_overloads",
            "Congestion signals from a worker: a turn start refused as overloaded (retried"
            " with backoff) or answered slowly; each halves the worker's turn limit.",
            ["worker", "signal"],
            registry=r,
        )
        self.client_disconnects = Counter(
            "codex_bridge_client_disconnects",
            "Clients that went away before their response ended.",
            ["endpoint"],
            registry=r,
        )
        self.parked_turns = Gauge(
            "codex_bridge_parked_turns",
            "Turns waiting for clients' tool results (they hold no turn slot).",
            registry=r,
        )
        self.stored_responses = Gauge(
            "codex_bridge_stored_responses",
            "Responses in the response store (counted at startup and after each purge).",
            registry=r,
        )
        self.store_errors = Counter(
            "codex_bridge_store_errors",
            "Store operations that failed (SQLite read-only, full, I/O error; Redis not"
            " answering); the request was still answered. store: responses or usage.",
            ["store", "op"],
            registry=r,
        )
        self.store_up = Gauge(
            "codex_bridge_store_up",
            "1 while the response store answers (always, for SQLite), 0 while a shared one (Redis) does not.",
            registry=r,
        )
        self.replayed_continuations = Counter(
            "codex_bridge_replayed_continuations",
            "previous_response_id continued by replaying the stored conversation into a fresh"
            " thread, because its Codex thread is not on this instance.",
            registry=r,
        )
        self.affinity = Counter(
            "codex_bridge_conversation_affinity",
            "Conversation affinity by outcome: hit (the conversation's held thread was found;"
            " elsewhere or gone then say it was not run on), miss, elsewhere (its worker had"
            " no free slot or ran more turns than another), gone (Codex refused the held"
            " thread, or a start on it failed), stale (its worker restarted), kept (a thread"
            " held after its turn),"
            " not_kept (reply cut, tool call, error), mismatch (the thread holds more than the"
            " client received), evicted, expired.",
            ["outcome"],
            registry=r,
        )
        self.affinity_threads = Gauge(
            "codex_bridge_affinity_threads",
            "Idle Codex threads held for the next turn of their conversation.",
            registry=r,
        )
        self.store_purged = Counter(
            "codex_bridge_store_purged",
            "Expired stored responses removed, and Codex threads deleted with them.",
            ["what"],
            registry=r,
        )

    def store_error(self, store: str, op: str) -> None:
        self.store_errors.labels(store, op).inc()

    def watch_pool(self, pool: WorkerPool) -> None:
        self._pool = pool

    def watch_accounts(self, accounts: dict[str, AccountState]) -> None:
        self._accounts = accounts

    # -- PoolObserver ------------------------------------------------------------------
    def rejected(self, reason: str) -> None:
        self.rejections.labels(reason).inc()

    def waited(self, seconds: float) -> None:
        self.queue_wait.observe(seconds)

    def restarted(self, reason: str) -> None:
        # Planned recycles are not failures: kept out of the restarts (and their alert).
        if reason.startswith(RECYCLE_PREFIX):
            self.worker_recycles.labels(reason.removeprefix(RECYCLE_PREFIX)).inc()
        else:
            self.worker_restarts.labels(reason).inc()

    def handshake(self, seconds: float) -> None:
        self.handshake_seconds.observe(seconds)

    def rpc_failed(self, method: str, kind: str) -> None:
        self.rpc_errors.labels(method, kind).inc()

    def overloaded(self, worker: int, signal: str) -> None:
        self.worker_overloads.labels(str(worker), signal).inc()
