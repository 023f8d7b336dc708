"""`sidstream serve`: features and scores over HTTP for ranking services (FastAPI + uvicorn).

    POST /features {"track_ids": [...], "user_ids": [...]}   SIDs (live codebook version) and histories
    POST /rank {"user_id": u, "candidate_track_ids": [...], "top_k": k}   scores from the live ranker
    GET  /health     store reachable, ranker and codebook versions (no broker involved)
    GET  /metrics    Prometheus text
    GET|POST /ping   an empty answer: the cost of the HTTP hop alone (bench online)

Choice: one FastAPI app, not Feast's feature server beside a scoring app. /rank needs the
online rows anyway (candidates' SIDs, the user's history and the history's SIDs), so one
process that reads the store once per request and scores in the same place saves a hop and a
second deployment; Feast's own server stays usable on the same repo (`feast serve`, tested).

Versions: the registry's LIVE pointers are checked every `serve.reload_s` seconds on a
background thread; a new ranker (and the codebook version it was trained on) is loaded beside
the old one and swapped in as one reference, so a request sees either the old pair or the new
pair, never a mix, and none fails during the switch.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import Request  # at module level: FastAPI resolves the endpoints' (postponed) annotations here
from pydantic import BaseModel, Field

from sidcore.config import Settings
from sidcore.registry import Registry

log = logging.getLogger(__name__)

SID_FEATURES = ("text_sid", "audio_sid", "joint_sid")
INLINE_IDS = 4  # /features with this few ids runs on the event loop, larger ones on the thread pool


class FeaturesRequest(BaseModel):
    track_ids: list[str] = Field(default_factory=list)
    user_ids: list[str] = Field(default_factory=list)


class RankRequest(BaseModel):
    user_id: str = Field(min_length=1)
    candidate_track_ids: list[str] = Field(min_length=1)
    top_k: int | None = Field(default=None, ge=1)


@dataclass(frozen=True)
class Snapshot:
    """What one request uses, swapped as a whole: the live ranker and its codebook version."""

    live_codebooks: str | None
    ranker_version: str | None
    ranker_codebooks: str | None  # the codebook version the ranker was trained on (its SIDs)
    model: Any
    id_rows: dict[str, int]
    layers: dict[str, int]  # codebook -> semantic layers the ranker embeds
    history_len: int


class ServingState:
    """Holds the current Snapshot; `refresh` loads newly promoted versions."""

    def __init__(self, settings: Settings, store: Any) -> None:
        self.settings = settings
        self.store = store
        self.registry = Registry(settings.registry_dir)
        self.snapshot = Snapshot(None, None, None, None, {}, {}, 20)
        self.switches = 0
        self.on_switch: Any = None  # called on every swap after start-up (the app's Prometheus counter)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.refresh()

    def refresh(self) -> bool:
        """Swap in the registry's live versions if they changed; True when it swapped."""
        cb = self.registry.live("codebooks")
        rk = self.registry.live("ranker")
        cur = self.snapshot
        live_cb = cb.version if cb else None
        ranker_v = rk.version if rk else None
        if live_cb == cur.live_codebooks and ranker_v == cur.ranker_version:
            return False
        if ranker_v == cur.ranker_version:
            new = Snapshot(live_cb, cur.ranker_version, cur.ranker_codebooks, cur.model, cur.id_rows, cur.layers, cur.history_len)
        elif rk is None:
            new = Snapshot(live_cb, None, None, None, {}, {}, 20)
        else:
            import torch

            from trainer.features import HISTORY_LEN
            from trainer.jobs import load_ranker

            model, vocab, manifest = load_ranker(rk)
            model.eval()
            torch.set_num_threads(self.settings.serve.torch_threads)
            sizes = manifest.get("codebook_sizes") or {}
            new = Snapshot(live_cb, rk.version, manifest.get("codebook_version"), model,
                           {item: i + 1 for i, item in enumerate(vocab)}, {m: len(k) for m, k in sizes.items()}, HISTORY_LEN)
        self.snapshot = new  # one reference: a request holds the old or the new snapshot
        self.switches += 1
        if self.on_switch is not None:
            self.on_switch()
        log.info("serving ranker %s (codebooks %s); live codebooks %s", new.ranker_version, new.ranker_codebooks, live_cb)
        return True

    def start(self) -> None:
        def loop() -> None:
            while not self._stop.wait(self.settings.serve.reload_s):
                try:
                    self.refresh()
                except Exception:  # noqa: BLE001 - a bad new version must not stop serving the current one
                    log.exception("could not load the new live versions; still serving %s", self.snapshot.ranker_version)

        self._thread = threading.Thread(target=loop, name="serve-reload", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()


# -- reads -----------------------------------------------------------------------------------------
def read_track_sids(store: Any, track_ids: list[str], version: str) -> dict[str, dict[str, list[int] | None]]:
    """{track: {text_sid, audio_sid, joint_sid}} for tracks with a row under `version` (one store call)."""
    if not track_ids:
        return {}
    resp = store.get_online_features(features=[f"track_sids:{f}" for f in SID_FEATURES],
                                     entity_rows=[{"track_id": t, "codebook_version": version} for t in track_ids]).to_dict()
    out: dict[str, dict[str, list[int] | None]] = {}
    for i, t in enumerate(resp["track_id"]):
        row = {f: resp[f][i] for f in SID_FEATURES}
        if any(v is not None for v in row.values()):
            out[t] = {f: (list(v) if v is not None else None) for f, v in row.items()}
    return out


def read_histories(store: Any, user_ids: list[str]) -> dict[str, list[str]]:
    """{user: history track ids, oldest first} for users with a row (one store call)."""
    if not user_ids:
        return {}
    resp = store.get_online_features(features=["user_history:history_item_ids"],
                                     entity_rows=[{"user_id": u} for u in user_ids]).to_dict()
    return {u: list(h) for u, h in zip(resp["user_id"], resp["history_item_ids"], strict=True) if h is not None}


# -- scoring ---------------------------------------------------------------------------------------
def score(snap: Snapshot, store: Any, user_id: str, candidates: list[str]) -> dict[str, Any]:
    """Scores of the candidates that have SIDs under the ranker's codebook version; the rest are
    listed as unknown. Candidates outside the ranker's ID vocabulary are scored from their SIDs
    alone (their ID embedding is the zero padding row)."""
    import torch

    history = read_histories(store, [user_id]).get(user_id, [])[-snap.history_len :]
    wanted = list(dict.fromkeys([*candidates, *history]))
    sids = read_track_sids(store, wanted, snap.ranker_codebooks or "")
    known = [c for c in dict.fromkeys(candidates) if c in sids]
    unknown = [c for c in dict.fromkeys(candidates) if c not in sids]
    if not known:
        return {"scored": [], "unknown": unknown, "history_len": len(history)}
    T = snap.history_len
    hist = [h for h in history if h in sids][-T:]
    pad = T - len(hist)
    rows = np.array([snap.id_rows.get(c, 0) for c in known], dtype=np.int64)
    hist_rows = np.array([0] * pad + [snap.id_rows.get(h, 0) for h in hist], dtype=np.int64)
    mask = np.array([False] * pad + [True] * len(hist))
    B = len(known)
    batch: dict[str, torch.Tensor] = {
        "item": torch.from_numpy(rows),
        "hist_item": torch.from_numpy(np.tile(hist_rows, (B, 1))),
        "hist_mask": torch.from_numpy(np.tile(mask, (B, 1))),
    }
    for modality, L in snap.layers.items():
        column = f"{modality}_sid"

        def codes(track: str, _col: str = column, _L: int = L) -> list[int]:
            v = sids[track].get(_col)
            return list(v[:_L]) if v is not None and len(v) >= _L else [-1] * _L

        cand = np.array([codes(c) for c in known], dtype=np.int64).reshape(B, L)
        h = np.array([[-1] * L] * pad + [codes(t) for t in hist], dtype=np.int64).reshape(T, L)
        batch[f"codes:{modality}"] = torch.from_numpy(cand)
        batch[f"hist_codes:{modality}"] = torch.from_numpy(np.tile(h, (B, 1, 1)))
    with torch.inference_mode():
        p = torch.sigmoid(snap.model(batch).float()).numpy()
    order = np.argsort(-p, kind="stable")
    scored = [{"track_id": known[i], "score": float(p[i]), "cold": known[i] not in snap.id_rows} for i in order]
    return {"scored": scored, "unknown": unknown, "history_len": len(hist)}


# -- the app ---------------------------------------------------------------------------------------
def create_app(settings: Settings, store: Any = None, state: ServingState | None = None, watch: bool = True) -> Any:
    from fastapi import FastAPI, HTTPException, Response
    from fastapi.concurrency import run_in_threadpool
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

    if store is None:
        from streams.sinks.feast import open_store

        store = open_store(settings.feast_dir, profile=settings.feast_profile, redis_url=settings.redis_url)
    state = state or ServingState(settings, store)
    metrics = CollectorRegistry()
    requests = Counter("sidstream_serve_requests", "HTTP requests", ["endpoint", "status"], registry=metrics)
    latency = Histogram("sidstream_serve_seconds", "request latency", ["endpoint"], registry=metrics,
                        buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2))
    switches = Counter("sidstream_serve_version_switches", "snapshot swaps", registry=metrics)
    app = FastAPI(title="sidstream", version="1")
    import anyio

    # scoring holds the GIL for most of its ~10 ms: more threads than cores only thrash, so
    # /rank requests beyond `serve.rank_threads` wait their turn (queueing, not failing)
    rank_slots = anyio.CapacityLimiter(settings.serve.rank_threads)
    app.state.serving = state
    limit = settings.serve

    class Measure:
        """Latency and status per endpoint, as plain ASGI (BaseHTTPMiddleware costs ~0.3 ms a request)."""

        def __init__(self, inner: Any) -> None:
            self.inner = inner

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
                latency.labels(path).observe(time.perf_counter() - started)
                requests.labels(path, str(status[0])).inc()

    app.add_middleware(Measure)

    def as_json(body: dict[str, Any], status: int = 200) -> Response:
        return Response(json.dumps(body, separators=(",", ":")), status_code=status, media_type="application/json")

    @app.api_route("/ping", methods=["GET", "POST"])
    async def ping_endpoint(request: Request) -> Response:
        """Nothing: reads the body (if any) and answers {} on the event loop, as /features does for a few ids."""
        await request.body()
        return as_json({})

    @app.get("/health")
    def health() -> Any:
        snap = state.snapshot
        try:
            read_histories(store, ["__health__"])
            ok, error = True, None
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            ok, error = False, f"{type(exc).__name__}: {exc}"
        body = {"status": "ok" if ok else "store_unreachable", "store": settings.feast_profile, "store_ok": ok,
                "error": error, "live_codebook_version": snap.live_codebooks, "ranker_version": snap.ranker_version,
                "ranker_codebook_version": snap.ranker_codebooks}
        return as_json(body, 200 if ok else 503)

    @app.get("/metrics")
    def prom() -> Response:
        return Response(generate_latest(metrics), media_type=CONTENT_TYPE_LATEST)

    def parse(model: type[BaseModel], body: bytes) -> Any:
        """The body as `model` (pydantic-core parses the bytes directly); 422 with the reason."""
        from pydantic import ValidationError

        try:
            return model.model_validate_json(body)
        except ValidationError as exc:
            raise HTTPException(422, [{"loc": e["loc"], "msg": e["msg"]} for e in exc.errors()]) from None

    @app.post("/features")
    async def features_endpoint(request: Request) -> Response:
        req = parse(FeaturesRequest, await request.body())
        if len(req.track_ids) + len(req.user_ids) <= INLINE_IDS:
            return features(req)  # a point lookup (~0.2 ms) costs less than the hop to a pool thread
        return await run_in_threadpool(features, req)

    def features(req: FeaturesRequest) -> Response:
        n = len(req.track_ids) + len(req.user_ids)
        if n == 0:
            raise HTTPException(422, "give track_ids and/or user_ids")
        if n > limit.max_ids:
            raise HTTPException(413, f"{n} ids in one request; the limit is {limit.max_ids} (settings.serve.max_ids)")
        snap = state.snapshot
        if req.track_ids and snap.live_codebooks is None:
            raise HTTPException(503, "no live codebook version")
        sids = read_track_sids(store, list(dict.fromkeys(req.track_ids)), snap.live_codebooks or "")
        hist = read_histories(store, list(dict.fromkeys(req.user_ids)))
        return as_json({
            "codebook_version": snap.live_codebooks,
            "tracks": [{"track_id": t, "found": t in sids, **sids.get(t, dict.fromkeys(SID_FEATURES))} for t in req.track_ids],
            "users": [{"user_id": u, "found": u in hist, "history": hist.get(u, [])} for u in req.user_ids],
        })

    @app.post("/rank")
    async def rank_endpoint(request: Request) -> Response:
        req = parse(RankRequest, await request.body())
        return await anyio.to_thread.run_sync(rank, req, limiter=rank_slots)

    def rank(req: RankRequest) -> Response:
        if len(req.candidate_track_ids) > limit.max_candidates:
            raise HTTPException(413, f"{len(req.candidate_track_ids)} candidates; the limit is {limit.max_candidates} "
                                     "(settings.serve.max_candidates)")
        snap = state.snapshot
        if snap.model is None:
            raise HTTPException(503, "no live ranker: run `sidstream train ranker` (or `train all`)")
        out = score(snap, store, req.user_id, req.candidate_track_ids)
        if req.top_k is not None:
            out["scored"] = out["scored"][: req.top_k]
        return as_json({"ranker_version": snap.ranker_version, "codebook_version": snap.ranker_codebooks,
                        "user_id": req.user_id, **out})

    if watch:
        state.on_switch = switches.inc
        state.start()
    return app


def run(settings: Settings, host: str, port: int) -> None:
    import uvicorn

    uvicorn.run(create_app(settings), host=host, port=port, log_level="warning")
