"""`sidstream serve`: features and scores over HTTP for ranking services (FastAPI + uvicorn).

    POST /features {"track_ids": [...], "user_ids": [...]}   SIDs (live codebook version) and histories
    POST /rank {"user_id": u, "candidate_track_ids": [...], "top_k": k}   scores from the live ranker
    GET  /health     store reachable, ranker and codebook versions (no broker involved)
    GET  /metrics    Prometheus text
    GET|POST /ping   an empty answer: the liveness probe, and the cost of the HTTP hop alone

Choice: one FastAPI app, not Feast's feature server beside a scoring app. /rank needs the
online rows anyway (candidates' SIDs, the user's history and the history's SIDs), so one
process that reads the store once per request and scores in the same place saves a hop and a
second deployment; Feast's own server stays usable on the same repo (`feast serve`, tested).

Versions: the registry's LIVE pointers are checked every `serve.reload_s` seconds on a
background thread; a new ranker (and the codebook version it was trained on) is loaded beside
the old one and swapped in as one reference, so a request sees either the old pair or the new
pair, never a mix, and none fails during the switch.

Hot path (issue 34): tracks' SIDs come from an in-process cache keyed by (track, codebook
version) (streams.sinks.sid_cache: rows never change under a version, so no invalidation; a miss
is one batched store read), and a ranker that goes live gets its vocabulary's item vectors
precomputed (trainer.fast_rank; cold tracks' rows are kept once computed), so /rank is one
history read, row gathers and a compiled attention loop; the model's own forward
(`trainer.serving.rank`) is the reference it is tested against, and the fallback for a model
kind without a fast path. POST /rank and /features are answered in front of FastAPI's
middleware stack (`ServeApp`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import orjson
from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from pydantic import BaseModel, Field, ValidationError
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from sidcore.config import Settings, dump_settings, get_settings, load_settings, redact
from sidstream.serve_guard import Guard, TokenSource
from streams.sinks.reader import SERVED_SIDS, read_histories, read_histories_async, read_track_sids
from streams.sinks.sid_cache import SidCache
from streams.sinks.store import is_transient_store_error, limit_redis_retries, open_store
from trainer.serving import ServingState, rank

log = logging.getLogger(__name__)
INLINE_IDS = 4  # /features with this few ids runs on the event loop, larger ones on the thread pool


class FeaturesRequest(BaseModel):
    track_ids: list[str] = Field(default_factory=list)
    user_ids: list[str] = Field(default_factory=list)


class RankRequest(BaseModel):
    user_id: str = Field(min_length=1)
    candidate_track_ids: list[str] = Field(min_length=1)
    top_k: int | None = Field(default=None, ge=1)


class Measure:
    """Latency and status per endpoint, as plain ASGI (BaseHTTPMiddleware costs ~0.3 ms a request)."""

    def __init__(self, inner: Any, latency: Histogram, requests: Counter) -> None:
        self.inner, self.latency, self.requests = inner, latency, requests

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.inner(scope, receive, send)
            return
        started, status = time.perf_counter(), [500]

        async def send_status(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.inner(scope, receive, send_status)
        finally:
            path = scope["path"]
            self.latency.labels(path).observe(time.perf_counter() - started)
            self.requests.labels(path, str(status[0])).inc()


def as_json(body: dict[str, Any], status: int = 200) -> Response:
    """The body as JSON bytes by orjson (a /rank answer of 100 scores: ~10 µs, the json module's ~130)."""
    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), status_code=status, media_type="application/json")


def parse(model: type[BaseModel], body: bytes) -> Any:
    """The body as `model` (pydantic-core parses the bytes directly); 422 with the reason."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise HTTPException(422, [{"loc": e["loc"], "msg": e["msg"]} for e in exc.errors()]) from None


def features(settings: Settings, state: ServingState, store: Any, cache: SidCache, req: FeaturesRequest) -> Response:
    """SIDs under the live codebook version and histories, for /features."""
    n = len(req.track_ids) + len(req.user_ids)
    if n == 0:
        raise HTTPException(422, "give track_ids and/or user_ids")
    if n > settings.serve.max_ids:
        raise HTTPException(413, f"{n} ids in one request; the limit is {settings.serve.max_ids} (settings.serve.max_ids)")
    snap = state.snapshot
    if req.track_ids and snap.live_codebooks is None:
        raise HTTPException(503, "no live codebook version")
    sids = cache.get_many(req.track_ids, snap.live_codebooks) if req.track_ids else {}
    hist = read_histories(store, list(dict.fromkeys(req.user_ids)))
    return as_json({
        "codebook_version": snap.live_codebooks,
        "tracks": [{"track_id": t, "found": t in sids, **sids.get(t, dict.fromkeys(SERVED_SIDS))} for t in req.track_ids],
        "users": [{"user_id": u, "found": u in hist, "history": hist.get(u, [])} for u in req.user_ids],
    })


def check_rank(settings: Settings, state: ServingState, req: RankRequest) -> None:
    """/rank's refusals, before anything is read: top_k and candidates over the limits, no ranker."""
    if req.top_k is not None and req.top_k > settings.serve.max_top_k:
        raise HTTPException(422, f"top_k {req.top_k}; the limit is {settings.serve.max_top_k} (settings.serve.max_top_k)")
    if len(req.candidate_track_ids) > settings.serve.max_candidates:
        raise HTTPException(413, f"{len(req.candidate_track_ids)} candidates; the limit is {settings.serve.max_candidates} "
                                 "(settings.serve.max_candidates)")
    if state.snapshot.model is None:
        raise HTTPException(503, "no live ranker: run `sidstream train ranker` (or `train all`)")


def ranked(settings: Settings, state: ServingState, store: Any, cache: SidCache, req: RankRequest,
           stored_history: list[str]) -> Response:
    """The live ranker's scores of the candidates, for /rank: given the user's stored history
    (read by the endpoint, awaited), then the fast path, which asks the SID cache (its misses in
    one store read) only for tracks without rows of their own (precomputed or kept), or `rank`,
    the model's forward on every track's SIDs under the ranker's codebook version, for a ranker
    without one. The refusals are checked
    again on the snapshot used here (the endpoint checked them before the read; a ranker may have
    gone live or away since)."""
    check_rank(settings, state, req)
    snap = state.snapshot
    history = stored_history[-snap.history_len :]
    version = snap.ranker_codebooks or ""
    if snap.fast is not None and settings.serve.fast_path:
        out = snap.fast.rank(req.candidate_track_ids, history, snap.history_len,
                             lambda outside: cache.get_many(outside, version))
    else:
        out = rank(snap, cache.get_many([*req.candidate_track_ids, *history], version), history, req.candidate_track_ids)
    if req.top_k is not None:
        out["scored"] = out["scored"][: req.top_k]
    return as_json({"ranker_version": snap.ranker_version, "codebook_version": snap.ranker_codebooks,
                    "user_id": req.user_id, **out})


def health(settings: Settings, state: ServingState, store: Any, cache: SidCache) -> Response:
    snap = state.snapshot
    try:
        read_histories(store, ["__health__"])
        ok, error = True, None
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        ok, error = False, redact(f"{type(exc).__name__}: {exc}", settings)
    body = {"status": "ok" if ok else "store_unreachable", "store": settings.feast_profile, "store_ok": ok,
            "error": error, "live_codebook_version": snap.live_codebooks, "ranker_version": snap.ranker_version,
            "ranker_codebook_version": snap.ranker_codebooks, "ranker_gate": _gate_summary(snap.gate)}
    return as_json(body, 200 if ok else 503)


def _gate_summary(gate: dict[str, Any] | None) -> dict[str, Any] | None:
    """The live ranker's gate metrics: its held-out AUC and interval, and the ranker it replaced."""
    if gate is None:
        return None
    return {k: gate.get(k) for k in ("passed", "candidate_auc", "candidate_interval", "live_version", "live_auc", "rows", "users")}


# -- the app ---------------------------------------------------------------------------------------
def create_app(settings: Settings, store: Any = None, state: ServingState | None = None, watch: bool = True) -> FastAPI:
    if store is None:
        store = open_store(settings.feast_dir, profile=settings.feast_profile, redis_url=settings.redis,
                           socket_timeout_s=settings.serve.store_timeout_s)
        limit_redis_retries(store, 1)  # a hanging store: 503 after ~2 timeouts, not redis-py's back-off
    state = state or ServingState(settings, read_sids=lambda tracks, version: read_track_sids(store, tracks, version))
    cache = SidCache.over_store(store, settings.serve.sid_cache_entries)
    metrics = CollectorRegistry()
    metrics.register(_CacheMetrics(cache))
    requests = Counter("sidstream_serve_requests", "HTTP requests", ["endpoint", "status"], registry=metrics)
    latency = Histogram("sidstream_serve_seconds", "request latency", ["endpoint"], registry=metrics,
                        buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2))
    switches = Counter("sidstream_serve_version_switches", "snapshot swaps", registry=metrics)
    live_auc = Gauge("sidstream_live_ranker_auc", "the live ranker's AUC on its gate's held-out window (NaN: none)",
                     registry=metrics)
    app = ServeApp(title="sidstream", version="1")
    app.state.serving = state
    app.state.sid_cache = cache
    tokens = TokenSource(settings.serve.tokens, settings.serve.tokens_file)
    app.add_middleware(Guard, tokens=tokens, max_body_bytes=settings.serve.max_body_bytes)
    app.add_middleware(Measure, latency=latency, requests=requests)  # outermost: refusals are counted too
    on = _Routes(settings, state, store, cache)

    @app.api_route("/ping", methods=["GET", "POST"])
    async def ping_endpoint(request: Request) -> Response:
        """Nothing: reads the body (if any) and answers {} on the event loop, as /features does for a few ids."""
        await request.body()
        return as_json({})

    @app.get("/health")
    def health_endpoint() -> Response:
        return on(health)

    @app.get("/metrics")
    def prom() -> Response:
        return Response(generate_latest(metrics), media_type=CONTENT_TYPE_LATEST)

    hot = _add_hot_routes(app, settings, state, on)
    # POST /rank and /features: the same Measure and Guard, then their handlers (ServeApp)
    app.hot = Measure(Guard(HotLane(hot), tokens=tokens, max_body_bytes=settings.serve.max_body_bytes),
                      latency=latency, requests=requests)
    app.hot_paths = frozenset(hot)

    def show_live_auc() -> None:
        gate = state.snapshot.gate
        live_auc.set(float("nan") if gate is None or gate.get("candidate_auc") is None else gate["candidate_auc"])

    def switched() -> None:
        switches.inc()
        show_live_auc()

    show_live_auc()
    if watch:
        state.on_switch = switched
        state.start()
    return app


def _add_hot_routes(app: FastAPI, settings: Settings, state: ServingState, on: _Routes
                    ) -> dict[str, Callable[[bytes], Awaitable[Response]]]:
    """POST /features and /rank: their handlers, by path.

    `ServeApp` sends them through Measure, Guard and `HotLane` (below), which calls the handlers
    with the body: past Starlette's middleware stack, FastAPI's exception middleware, routing,
    Request objects and per-request handling; errors still answer {"detail": ...}. Routes with the
    same handlers stay registered so that other methods answer 405. They are not in the OpenAPI
    schema; their bodies are FeaturesRequest and RankRequest."""
    # Concurrency [measured, docs/scaling.md "Serving"]: /rank awaits its history read on the
    # store's asyncio client (the loop serves other requests meanwhile); a fast-path /rank of at
    # most `serve.rank_inline_candidates` (200) candidates is then scored on the event loop
    # (~0.16 ms in process for 100 candidates on the bench's ranker, ~0.34 ms at MCCA's default
    # sizes), less than the hop to a pool thread and back plus the GIL hand-offs between the loop
    # and the pool (A/B on 2 cores with hey, unthrottled, alternating runs: 703-731 rps on the
    # loop vs 466-510 on the pool). /features' history read blocks the loop: a store that hangs
    # stalls it (and /ping) until the read fails, after `serve.store_timeout_s` (1 s) twice, and
    # the request answers 503 (tests/integration/test_serve.py). Larger requests and the
    # reference path (the model's forward, milliseconds) go to the pool, at most
    # `serve.rank_threads` at once, the rest queueing. Micro-batching across requests is not done:
    # each request has its own history, so a batch would share only the per-call overhead. More
    # processes: `serve.workers` (uvicorn workers, each with its own caches) or replicas.
    async def features_body(body: bytes) -> Response:
        req = parse(FeaturesRequest, body)
        if len(req.track_ids) + len(req.user_ids) <= INLINE_IDS:
            return on(features, req)  # a point lookup (~0.2 ms) costs less than the hop to a pool thread
        return await run_in_threadpool(on, features, req)

    inline_candidates = settings.serve.rank_inline_candidates if settings.serve.fast_path else 0
    rank_slots = anyio.CapacityLimiter(settings.serve.rank_threads)

    async def rank_body(body: bytes) -> Response:
        req = parse(RankRequest, body)
        check_rank(settings, state, req)
        history = await on.history(req.user_id)  # awaited: the loop serves others while Redis answers
        if len(req.candidate_track_ids) <= inline_candidates and state.snapshot.fast is not None:
            return on(ranked, req, history)  # bounded numpy work: cheaper here than the hop to a pool thread
        return await anyio.to_thread.run_sync(on, ranked, req, history, limiter=rank_slots)

    hot = {"/features": features_body, "/rank": rank_body}
    for path, handler in hot.items():  # what the lane does not take (other methods) meets these: 405
        app.router.routes.append(Route(path, _as_endpoint(handler), methods=["POST"]))
    return hot


def _as_endpoint(handler: Callable[[bytes], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        return await handler(await request.body())

    return endpoint


class ServeApp(FastAPI):
    """The FastAPI app, with POST /rank and /features taken in front of its middleware stack:
    `hot` (Measure -> Guard -> HotLane, set by create_app) answers them, so they skip Starlette's
    ServerErrorMiddleware, FastAPI's telemetry and body-limit wrappers, its exception middleware
    and its router (each a coroutine and, for the error middleware, a wrapped `send` per request).
    Every other request goes through the app as usual."""

    hot: Any = None
    hot_paths: frozenset[str] = frozenset()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in self.hot_paths:
            await self.hot(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


class HotLane:
    """ASGI for the POST routes `ServeApp` sends here: each path's handler called with the body;
    an HTTPException answers {"detail": ...} with its status, as FastAPI's handler does; any other
    exception answers 500 (as Starlette's ServerErrorMiddleware, which this lane is in front of)
    and is raised on for the server's log."""

    def __init__(self, routes: dict[str, Callable[[bytes], Awaitable[Response]]]) -> None:
        self.routes = routes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        handler = self.routes[scope["path"]]
        try:
            body = await _read_body(receive)
            if body is None:  # the client went away
                return
            response = await handler(body)
        except HTTPException as exc:
            response = as_json({"detail": exc.detail}, exc.status_code)
            if exc.headers:
                response.headers.update(exc.headers)
        except Exception:
            await PlainTextResponse("Internal Server Error", status_code=500)(scope, receive, send)
            raise
        await response(scope, receive, send)


async def _read_body(receive: Any) -> bytes | None:
    """The request body (None on a disconnect before its end)."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class _Routes:
    """Calls an endpoint's function with the app's settings, serving state, store and SID cache."""

    def __init__(self, settings: Settings, state: ServingState, store: Any, cache: SidCache) -> None:
        self.settings, self.state, self.store, self.cache = settings, state, store, cache

    def __call__(self, fn: Callable[..., Response], *args: Any) -> Response:
        """fn's answer; 503 where the online store failed in a way a retry can cure (down,
        unreachable, or silent past serve.store_timeout_s), with the reason."""
        try:
            return fn(self.settings, self.state, self.store, self.cache, *args)
        except HTTPException:
            raise
        except Exception as exc:
            raise self._unavailable(exc) from exc

    async def history(self, user_id: str) -> list[str]:
        """The user's stored history (oldest first; [] for none), awaited; 503 as above."""
        try:
            return (await read_histories_async(self.store, [user_id])).get(user_id, [])
        except Exception as exc:
            raise self._unavailable(exc) from exc

    def _unavailable(self, exc: Exception) -> HTTPException:
        """503 for a store error a retry can cure; anything else is raised as it is."""
        if not is_transient_store_error(exc):
            raise exc
        log.warning("serve: online store failed: %s: %s", type(exc).__name__, exc)
        return HTTPException(503, redact(f"online store unavailable: {type(exc).__name__}: {exc}", self.settings))


class _CacheMetrics:
    """The SID cache's hits, misses, store reads, entries and hit rate, read at scrape time."""

    def __init__(self, cache: SidCache) -> None:
        self.cache = cache

    def collect(self) -> Any:
        c = self.cache
        yield CounterMetricFamily("sidstream_serve_sid_cache_hits", "SID rows answered from the cache", value=c.hits)
        yield CounterMetricFamily("sidstream_serve_sid_cache_misses", "SID rows not in the cache (read from the store)",
                                  value=c.misses)
        yield CounterMetricFamily("sidstream_serve_sid_cache_store_reads", "batched store reads filling misses",
                                  value=c.store_reads)
        yield GaugeMetricFamily("sidstream_serve_sid_cache_entries", "(track, version) rows held", value=len(c))
        yield GaugeMetricFamily("sidstream_serve_sid_cache_hit_rate", "hits / lookups since start (NaN: none yet)",
                                value=c.hit_rate)


SETTINGS_ENV = "SIDSERVE_WORKER_SETTINGS"  # (not SIDSTREAM_*: those are settings) how uvicorn's worker processes get the parent's settings


def worker_app() -> FastAPI:
    """The app of one uvicorn worker process (`serve.workers` > 1), on the settings the parent wrote."""
    path = os.environ.get(SETTINGS_ENV)
    return create_app(load_settings(path) if path else get_settings())


def run(settings: Settings, host: str, port: int) -> None:
    import uvicorn  # lazy: only the serve command runs a server

    sv = settings.serve
    tls = {"ssl_certfile": str(sv.ssl_certfile), "ssl_keyfile": str(sv.ssl_keyfile)} if sv.ssl_certfile else {}
    if sv.tokens is None and sv.tokens_file is None and host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serve on %s answers anyone who reaches it: set serve.tokens_file (docs/security.md)", host)
    if settings.serve.workers == 1:
        uvicorn.run(create_app(settings), host=host, port=port, log_level="warning", **tls)
        return
    # each worker is its own process with its own SID cache and item vectors
    settings_dir = settings.home / "serve"
    settings_dir.mkdir(parents=True, exist_ok=True)
    os.environ[SETTINGS_ENV] = str(dump_settings(settings, settings_dir / f"settings-{os.getpid()}.json"))
    uvicorn.run("sidstream.serve:worker_app", factory=True, workers=settings.serve.workers, host=host, port=port,
                log_level="warning", **tls)
