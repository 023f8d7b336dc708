"""`sidstream bench online`: `sidstream serve` under a real HTTP load generator at fixed request
rates, against the raw Feast read of the same rows measured in the same run.

One run on loopback: a synthetic catalogue (text + audio embeddings, users' histories) gets a
codebook version and an MCCA ranker trained by the real jobs (trainer.jobs), its SIDs and
histories are written to the chosen online store (`--store redis` starts a throwaway
redis-server when none answers at settings.redis_url), and `sidstream serve` runs in its own
process (as deployed). The load comes from `hey` (Debian package `hey`): for each target rate,
`-c` workers each capped at rate/c requests/s for `--seconds`, one keep-alive connection each,
every response's latency written as CSV (p50 / p99 / p99.9 computed here from all of them).
hey's workers are closed loops under a rate cap: when the server falls behind, fewer requests
are sent (achieved_rps < target_rps) rather than queued, so a point counts as sustained only
when achieved_rps >= 95 % of the target with no errors and p99 <= `--p99-limit-ms`.

  raw_feast_1 / raw_feast_100   store.get_online_features of 1 / 100 tracks' SIDs, in this
                                process, back to back (the reference)
  features_1 / features_100     POST /features with those tracks, at each rate
  rank                          POST /rank, 100 candidates (90 % catalogue, 10 % cold tracks),
                                a user with 20 history items, at each rate; the ladder goes on
                                past 1,000 until a rate is not sustained
  rank.reference_path           the path before issue 34 in the same run: serve.fast_path = false
                                (the model's forward on the padded batch) and no SID cache, at
                                100 requests/s and unthrottled
  rank.cold_cache               the miss path: a second server with serve.sid_cache_entries = 0,
                                serve.item_vectors = 0 and serve.cold_rows = 0 (every request
                                reads all 120 SIDs from the store and computes every vector)
                                at 100 requests/s
  scoring_us                    in-process: the fast path (trainer.fast_rank) vs the model's
                                forward (trainer.serving.rank) on the same 100 candidates; and
                                the fast path of a ranker of MCCA's default sizes (emb 64,
                                attention 36, MLP 200-80; the bench's is 16, 16, 32-16)
  cache_hit_rate                the warm server's SID cache hits / lookups over the whole run
  rank.shared_cores_at_1000     with --pin (the default): the same server at 1,000 requests/s
                                with hey on its core too (Redis stays on the others)
  cores                         with two or more cores and --pin: the server on the first core,
                                hey, Redis and the bench on the rest (a pod's cores are its own
                                and its callers elsewhere; on a 2-core machine ten hey processes
                                otherwise preempt the server); "shared" with --no-pin or one core
  ranker                        the served MCCA's sizes: --ranker bench (the default: embeddings
                                16, attention 16, MLP 32-16; trained in seconds) or --ranker
                                default (MCCA's defaults: 64, 36, 200-80)
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import click
import numpy as np

from sidcore.config import Settings

# the served MCCA's sizes by --ranker name: the bench's small one (trained in seconds), MCCA's defaults
RANKERS: dict[str, dict[str, Any]] = {"bench": {"emb_dim": 16, "att_hidden": (16,), "mlp_hidden": (32, 16)}, "default": {}}


def prepare_online(settings: Settings, work: Path, n_users: int = 200, n_items: int = 400, n_new: int = 50,
                   seed: int = 0, ranker: str = "bench") -> dict[str, Any]:
    """Train codebooks + an MCCA ranker (of the sizes RANKERS[ranker] names) on a synthetic catalogue (promoted in settings' registry), write every item's
    full IDs and every user's history to the online store, and add `n_new` tracks the ranker never
    saw (cold: SIDs only). Returns the ids by kind."""
    from psrq import load_codebook_set
    from sidcore.config import CodebookSettings
    from sidcore.registry import Registry
    from streams.sinks.store import open_store
    from streams.sinks.writer import FeastSink, SidRow, UserHistoryRow
    from trainer.codes import with_joint
    from trainer.dataset import write_dataset
    from trainer.jobs import JobConfig, train_codebooks, train_ranker
    from trainer.models import ModelConfig
    from trainer.synthetic import make_synthetic
    from trainer.train_loop import TrainConfig

    ds = make_synthetic(n_users=n_users, n_items=n_items, events_per_user=20, modalities=("text", "audio"), seed=seed)
    write_dataset(work / "data", ds)
    config = JobConfig(registry=settings.registry_dir, work_dir=work / "jobs", data=work / "data",
                       codebook=CodebookSettings(codebook_size=8, layers=2),
                       model=ModelConfig(kind="mcca", **RANKERS[ranker]),
                       train=TrainConfig(epochs=1, batch_size=256, checkpoint_every=1000),
                       force_gate=True)  # the serving benchmark needs a live ranker, not a good one: past the ranker gate
    codebooks = train_codebooks(config)
    ranker = train_ranker(config)
    cs = load_codebook_set(codebooks.path)
    rng = np.random.default_rng(seed)
    item_ids = list(ds.embedding_ids)
    new_ids = [f"new:{i:04d}" for i in range(n_new)]
    pick = rng.integers(0, len(item_ids), n_new)
    emb = {m: np.concatenate([X, X[pick] + 0.05 * rng.standard_normal((n_new, X.shape[1])).astype(np.float32)])
           for m, X in ds.embeddings.items()}
    emb = with_joint(emb)
    ids = item_ids + new_ids
    codes = {m: cs.codebooks[m].encode(emb[m]) for m in cs.modalities}  # full IDs, unique within the catalogue
    now = int(time.time() * 1000)
    rows = [SidRow(t, now, codebooks.version, *(tuple(codes[m][i].tolist()) if m in codes else None for m in ("text", "audio", "joint")))
            for i, t in enumerate(ids)]
    store = open_store(settings.feast_dir, profile=settings.feast_profile, redis_url=settings.redis)
    sink = FeastSink(store)
    for start in range(0, len(rows), 500):
        sink.write(rows[start : start + 500])
    pos = ds.interactions[ds.interactions["label"] > 0].sort_values("timestamp")
    hist = pos.groupby("user_id")["item_id"].apply(lambda s: tuple(s.astype(str).tolist()[-20:]))
    sink.write_history([UserHistoryRow(str(u), now, h) for u, h in hist.items()])
    assert Registry(settings.registry_dir).live("ranker") is not None
    return {"codebook_version": codebooks.version, "ranker_version": ranker.version if ranker else None,
            "items": item_ids, "new": new_ids, "users": [str(u) for u in hist.index]}


def _sizes(ranker: str) -> dict[str, Any]:
    """The sizes of the MCCA `ranker` names, MCCA's defaults where RANKERS leaves them."""
    from trainer.models import ModelConfig

    config = ModelConfig(kind="mcca", **RANKERS[ranker])
    return {"emb_dim": config.emb_dim, "att_hidden": list(config.att_hidden), "mlp_hidden": list(config.mlp_hidden)}


def core_split() -> tuple[list[int], list[int]] | None:
    """(the server's core, the others) when this process may run on two or more cores, else None.

    With a split, `sidstream serve` runs on a core of its own and hey, Redis and this process on
    the others, as on a deployment where the pod's cores are its own and the callers are on other
    machines; on a 2-core machine the ten hey processes of a 1,000 rps point otherwise preempt
    the server on its own core, which is the load generator's cost, not the server's."""
    cpus = sorted(os.sched_getaffinity(0))
    return ([cpus[0]], cpus[1:]) if len(cpus) >= 2 else None


def pin(pid: int, cpus: list[int]) -> None:
    """Every thread of process `pid` (and threads it starts later) on `cpus`."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            os.sched_setaffinity(int(task.name), cpus)
        except ProcessLookupError:  # the thread ended meanwhile
            pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerThread:
    """uvicorn serving an app on a free loopback port, in this process."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = _free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline:
                raise TimeoutError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


class ServerProcess:
    """`sidstream serve` in its own process (as deployed), on a free loopback port."""

    def __init__(self, settings: Settings, work: Path, cpus: list[int] | None = None) -> None:
        from sidcore.config import dump_settings

        self.port, self.cpus = _free_port(), cpus
        self.settings_file = dump_settings(settings, work / "serve-settings.json")
        self.log = work / "serve.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerProcess:
        import subprocess
        import sys

        import httpx

        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "sidstream.cli", "--settings", str(self.settings_file), "serve",
                                          "--port", str(self.port)], stdout=log, stderr=subprocess.STDOUT)
        if self.cpus is not None:
            pin(self.proc.pid, self.cpus)  # before it starts its threads (they inherit it)
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sidstream serve did not come up: {self.log.read_text()[-2000:]}")
            time.sleep(0.3)

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def percentiles(samples_s: Any) -> dict[str, float]:
    """{"p50_ms", "p99_ms", "p999_ms"} of latencies in seconds."""
    a = np.asarray(samples_s, dtype=np.float64) * 1000
    if a.size == 0:
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "p999_ms": float("nan")}
    p50, p99, p999 = np.percentile(a, [50, 99, 99.9])
    return {"p50_ms": round(float(p50), 3), "p99_ms": round(float(p99), 3), "p999_ms": round(float(p999), 3)}


def _timed_calls(fn: Any, args: list[Any]) -> dict[str, Any]:
    times = []
    for a in args:
        t0 = time.perf_counter()
        fn(a)
        times.append(time.perf_counter() - t0)
    return {**percentiles(times), "calls": len(times)}


def load_generator() -> str:
    """"hey VERSION" (the Debian package's version); a clear error when hey is missing."""
    import shutil
    import subprocess

    if shutil.which("hey") is None:
        raise click.ClickException("the load generator `hey` is not on PATH: apt-get install hey")
    try:
        version = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "hey"], capture_output=True, text=True,
                                 check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        version = "unknown version"
    return f"hey {version}"


PER_PROCESS_RPS = 100  # a fixed rate is sent by ceil(rate / this) hey processes of one connection each


def hey_point(url: str, body: bytes, rate: float | None, seconds: float, work: Path, concurrency: int | None = None,
              server_pid: int | None = None) -> dict[str, Any]:
    """POST `body` to `url` at `rate` requests/s (None: as fast as `concurrency` connections go)
    for `seconds`; latency percentiles over every response, the achieved rate, the errors, and the
    CPU milliseconds per request of the server process (`server_pid`) and of hey itself (the
    machine's cores are shared between them).

    Pacing: hey's `-q` paces each of its connections by its own ticker, and the tickers of one hey
    start together, so `hey -c N -q r` sends bursts of N requests every 1/r s, and the last of a
    burst waits for the N - 1 before it (at 500 rps over 10 connections, bursts of 10 every 20 ms).
    A fixed rate is therefore sent by P = ceil(rate / 100) hey processes of one connection each
    (`-c 1 -q rate/P`), started one after another so that their tickers are out of phase: requests
    arrive spread over each 1/r s instead of together. A connection is closed-loop (its next
    request waits for the answer), so a server slower than P / rate per request falls short of
    the rate, which the achieved rate shows."""
    import resource
    import subprocess

    import psutil

    body_file = work / "hey-body.json"
    body_file.write_bytes(body)
    base = ["hey", "-z", f"{seconds}s", "-m", "POST", "-T", "application/json", "-D", str(body_file), "-t", "10", "-o", "csv"]
    if rate is None:
        c = concurrency or 16
        commands = [[*base, "-c", str(c), url]]
    else:
        c = max(1, int(np.ceil(rate / PER_PROCESS_RPS)))
        commands = [[*base, "-c", "1", "-q", f"{rate / c:.3f}", url] for _ in range(c)]
    server = psutil.Process(server_pid) if server_pid is not None else None
    cpu0 = sum(server.cpu_times()[:2]) if server else 0.0
    kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    started, procs = [], []
    t0 = time.perf_counter()
    for i, cmd in enumerate(commands):  # out of phase: the i-th starts i/c of a tick after the first
        if rate is not None:
            time.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
        started.append(time.perf_counter() - t0)
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate() for p in procs]
    kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_cpu = sum(server.cpu_times()[:2]) - cpu0 if server else None
    hey_cpu = (kids1.ru_utime - kids0.ru_utime) + (kids1.ru_stime - kids0.ru_stime)
    for p, (_, err) in zip(procs, outs, strict=True):
        if p.returncode != 0:
            raise RuntimeError(f"hey exited with {p.returncode}: {err[-500:]}")
    blocks = []
    for start, (out, _) in zip(started, outs, strict=True):
        lines = out.strip().splitlines()[1:]  # response-time,DNS+dialup,DNS,Request-write,Response-delay,Response-read,status-code,offset
        block = np.array([[float(x) for x in (ln.split(",")[0], ln.split(",")[6], ln.split(",")[7])] for ln in lines],
                         dtype=np.float64).reshape(-1, 3)
        block[:, 2] += start  # offsets on one clock
        blocks.append(block)
    rows = np.concatenate(blocks) if blocks else np.zeros((0, 3))
    ok = rows[:, 1] == 200
    span = float((rows[:, 2] + rows[:, 0]).max() - rows[:, 2].min()) if len(rows) else seconds
    n = max(len(rows), 1)
    cpu = {"hey_cpu_ms_per_request": round(hey_cpu * 1e3 / n, 3)}
    if server_cpu is not None:
        cpu["server_cpu_ms_per_request"] = round(server_cpu * 1e3 / n, 3)
    return {"target_rps": rate, "achieved_rps": round(len(rows) / max(span, 1e-9), 1), **percentiles(rows[ok, 0]),
            "errors": int((~ok).sum()), "requests": len(rows), "connections": c, **cpu}


def sustained(point: dict[str, Any], p99_limit_ms: float) -> bool:
    return (point["errors"] == 0 and point["achieved_rps"] >= 0.95 * point["target_rps"]
            and point["p99_ms"] <= p99_limit_ms)


def ladder(url: str, body: bytes, seconds: float, work: Path, p99_limit_ms: float, rates: list[int],
           beyond: list[int], server_pid: int | None = None) -> dict[str, Any]:
    """The points at `rates`, then at each of `beyond` while the last was sustained; the highest
    sustained target, and the unthrottled rate (16 connections) for reference."""
    points = [hey_point(url, body, r, seconds, work, server_pid=server_pid) for r in rates]
    for r in beyond:
        if not sustained(points[-1], p99_limit_ms):
            break
        points.append(hey_point(url, body, r, seconds, work, server_pid=server_pid))
    ok = [p["target_rps"] for p in points if sustained(p, p99_limit_ms)]
    unthrottled = hey_point(url, body, None, seconds, work, concurrency=16, server_pid=server_pid)
    return {"points": points, "max_sustained_rps": max(ok) if ok else 0, "unthrottled_16_connections": unthrottled}


def _metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None


def _scoring_us(settings: Settings, store: Any, body: dict[str, Any], repeats: int = 300) -> dict[str, Any]:
    """In-process scoring only (rows already read): fast path vs the model's forward, µs per call."""
    from streams.sinks.reader import read_histories, read_track_sids
    from trainer.fast_rank import FastRanker
    from trainer.models import ModelConfig, build_model
    from trainer.serving import ServingState, rank

    state = ServingState(settings, read_sids=lambda t, v: read_track_sids(store, t, v))
    snap = state.snapshot
    assert snap.fast is not None
    history = read_histories(store, [body["user_id"]]).get(body["user_id"], [])[-snap.history_len :]
    cands = body["candidate_track_ids"]
    sids = read_track_sids(store, [*cands, *history], snap.ranker_codebooks or "")
    outside = {t: sids[t] for t in [*cands, *history] if t in sids and t not in snap.fast.rows}

    def per_call(fn: Any) -> float:
        fn()
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        return (time.perf_counter() - t0) / repeats * 1e6

    model_us = per_call(lambda: rank(snap, sids, history, cands))
    fast_us = per_call(lambda: snap.fast.rank(cands, history, snap.history_len, outside))  # type: ignore[union-attr]
    # the bench's ranker is small (prepare_online); the same request on a ranker of MCCA's default
    # sizes (weights untrained: the work is the same), its rows precomputed for the same tracks
    model: Any = snap.model
    sizes = {m: list(e.sizes) for m, e in model.sid_emb.items()}
    big = build_model(ModelConfig(kind="mcca"), model.id_emb.num_embeddings, sizes).eval()
    fast = FastRanker(big, snap.id_rows, snap.layers, cold_rows=settings.serve.cold_rows)
    known = read_track_sids(store, list(snap.fast.rows), snap.ranker_codebooks or "")  # type: ignore[union-attr]
    fast.precompute(list(known), list(known.values()))
    default_us = per_call(lambda: fast.rank(cands, history, snap.history_len, outside))
    return {"model_forward": round(model_us, 1), "fast_path": round(fast_us, 1), "model_over_fast": round(model_us / fast_us, 2),
            "fast_path_default_sizes": round(default_us, 1)}


@contextmanager
def redis_at(url: str, work: Path) -> Iterator[str]:
    """`url` when a Redis answers there, else a throwaway redis-server (no persistence) on a free
    loopback port for the run; yields the host:port to use."""
    import shutil
    import subprocess

    host, _, port = url.rpartition(":")
    if _redis_ping(host or "127.0.0.1", int(port)):
        yield url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        raise click.ClickException(f"no Redis answers at {url} and redis-server is not on PATH: apt-get install redis-server")
    free = _free_port()
    (work / "redis").mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([binary, "--port", str(free), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(work / "redis")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not _redis_ping("127.0.0.1", free):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise click.ClickException(f"redis-server did not start on port {free} (exit code {proc.poll()})")
            time.sleep(0.05)
        click.echo(f"bench online: no Redis at {url}; started redis-server on 127.0.0.1:{free}", err=True)
        yield f"127.0.0.1:{free}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _redis_ping(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


RATES = [100, 500, 1000]
BEYOND = [1500, 2000, 3000, 4000]


def run_online(settings: Settings, work: Path, seconds: float, p99_limit_ms: float, raw_calls: int = 1000,
               split: tuple[list[int], list[int]] | None = None, ranker: str = "bench") -> dict[str, Any]:
    """The whole bench (module docstring); `split`: the server's core and the others' (this
    process, hey and Redis already run on the others), or None: all share every core; `ranker`:
    the served ranker's sizes, by name (RANKERS)."""
    import httpx

    from streams.sinks.store import open_store

    generator = load_generator()
    ids = prepare_online(settings, work, ranker=ranker)
    store = open_store(settings.feast_dir, profile=settings.feast_profile, redis_url=settings.redis)
    rng = np.random.default_rng(1)
    version = ids["codebook_version"]
    features = [f"track_sids:{f}" for f in ("text_sid", "audio_sid", "joint_sid")]
    out: dict[str, Any] = {"bench": "online", "store": "sqlite" if settings.feast_profile == "local" else "redis",
                           "seconds_per_point": seconds, "p99_limit_ms": p99_limit_ms, "load_generator": generator,
                           "cores": {"server": split[0], "hey_redis_bench": split[1]} if split else "shared",
                           "ranker": _sizes(ranker)}
    server_cpus = split[0] if split else None
    picks = {1: [str(rng.choice(ids["items"]))],
             100: [str(t) for t in rng.choice(ids["items"] + ids["new"], 100, replace=False)]}
    for n, tracks in picks.items():
        rows = [{"track_id": t, "codebook_version": version} for t in tracks]
        out[f"raw_feast_{n}"] = _timed_calls(
            lambda _, r=rows: store.get_online_features(features=features, entity_rows=r).to_dict(), list(range(raw_calls)))
    user = next(u for u in ids["users"] if len(_history(store, u)) >= 20)
    n_new = 10
    rank_body = {"user_id": user, "candidate_track_ids": [str(t) for t in rng.choice(ids["items"], 100 - n_new, replace=False)]
                 + [str(t) for t in rng.choice(ids["new"], n_new, replace=False)]}
    out["rank_request"] = {"candidates": 100, "cold_candidates": n_new, "history_items": len(_history(store, user))}
    out["scoring_us"] = _scoring_us(settings, store, rank_body)
    bodies = {"rank": json.dumps(rank_body).encode(), "features_1": json.dumps({"track_ids": picks[1]}).encode(),
              "features_100": json.dumps({"track_ids": picks[100]}).encode()}
    with ServerProcess(settings, work, server_cpus) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        for _ in range(200):  # warm-up: caches filled, code paths run
            for path, b in (("/rank", "rank"), ("/features", "features_1"), ("/features", "features_100")):
                client.post(path, content=bodies[b], headers={"content-type": "application/json"}).raise_for_status()
        pid = server.proc.pid
        out["rank"] = ladder(f"{server.url}/rank", bodies["rank"], seconds, work, p99_limit_ms, RATES, BEYOND, pid)
        if split:  # the same server at 1,000 rps with hey on its core too (Redis stays on the others)
            every = split[0] + split[1]
            pin(pid, every)
            os.sched_setaffinity(0, every)
            try:
                out["rank"]["shared_cores_at_1000"] = hey_point(f"{server.url}/rank", bodies["rank"], 1000, seconds, work,
                                                                server_pid=pid)
            finally:
                pin(pid, split[0])
                os.sched_setaffinity(0, split[1])
        for name in ("features_1", "features_100"):
            out[name] = ladder(f"{server.url}/features", bodies[name], seconds, work, p99_limit_ms, RATES, BEYOND, pid)
        metrics = client.get("/metrics").text
    out["cache_hit_rate"] = _metric(metrics, "sidstream_serve_sid_cache_hit_rate")
    out["cache_entries"] = _metric(metrics, "sidstream_serve_sid_cache_entries")
    cold = settings.model_copy(update={"serve": settings.serve.model_copy(update={"sid_cache_entries": 0, "item_vectors": 0,
                                                                                 "cold_rows": 0})})
    (work / "cold").mkdir(exist_ok=True)
    with ServerProcess(cold, work / "cold", server_cpus) as server:
        httpx.post(f"{server.url}/rank", content=bodies["rank"], headers={"content-type": "application/json"}).raise_for_status()
        point = hey_point(f"{server.url}/rank", bodies["rank"], 100, seconds, work, server_pid=server.proc.pid)
    out["rank"]["cold_cache"] = {"settings": {"serve.sid_cache_entries": 0, "serve.item_vectors": 0, "serve.cold_rows": 0},
                                 "store_reads_per_request": 2, "sids_read_per_request": 100 + out["rank_request"]["history_items"],
                                 **point}
    ref = settings.model_copy(update={"serve": settings.serve.model_copy(update={"sid_cache_entries": 0, "fast_path": False})})
    (work / "reference").mkdir(exist_ok=True)
    with ServerProcess(ref, work / "reference", server_cpus) as server:
        httpx.post(f"{server.url}/rank", content=bodies["rank"], headers={"content-type": "application/json"}).raise_for_status()
        out["rank"]["reference_path"] = {
            "settings": {"serve.sid_cache_entries": 0, "serve.fast_path": False},
            "at_100": hey_point(f"{server.url}/rank", bodies["rank"], 100, seconds, work, server_pid=server.proc.pid),
            "unthrottled_16_connections": hey_point(f"{server.url}/rank", bodies["rank"], None, seconds, work, concurrency=16,
                                                    server_pid=server.proc.pid)}
    fast_max = out["rank"]["unthrottled_16_connections"]["achieved_rps"]
    out["rank"]["unthrottled_over_reference_path"] = round(
        fast_max / max(out["rank"]["reference_path"]["unthrottled_16_connections"]["achieved_rps"], 1e-9), 2)
    out["goals"] = goals(out)
    return out


def _history(store: Any, user: str) -> list[str]:
    from streams.sinks.reader import read_histories

    return read_histories(store, [user]).get(user, [])


def _at(ladder_out: dict[str, Any], rate: int) -> dict[str, Any] | None:
    return next((p for p in ladder_out["points"] if p["target_rps"] == rate), None)


def goals(out: dict[str, Any]) -> dict[str, Any]:
    """Issue 34's "done when", from this run: each with the measured value and whether it is met."""
    rank500 = _at(out["rank"], 500) or {}
    best = max((p for p in out["rank"]["points"] if p["target_rps"] == out["rank"]["max_sustained_rps"]),
               key=lambda p: p["target_rps"], default={})
    f100 = [(p["target_rps"], p["p99_ms"]) for p in out["features_100"]["points"]]
    raw99 = out["raw_feast_100"]["p99_ms"]
    return {
        "rank_p99_at_500_le_5ms": {"p99_ms": rank500.get("p99_ms"), "achieved_rps": rank500.get("achieved_rps"),
                                   "met": bool(rank500) and sustained(rank500, 5.0)},
        "rank_max_sustained_ge_1000": {"max_sustained_rps": out["rank"]["max_sustained_rps"],
                                       "p99_ms_there": best.get("p99_ms"),
                                       "met": out["rank"]["max_sustained_rps"] >= 1000},
        "features_100_p99_le_raw_plus_1ms": {"raw_feast_100_p99_ms": raw99,
                                             "features_100_p99_ms_by_rate": dict(f100),
                                             "met_at_rates": [r for r, p in f100 if p <= raw99 + 1.0]},
    }


@click.command("online")
@click.option("--store", type=click.Choice(["sqlite", "redis"]), default="redis", show_default=True)
@click.option("--redis-url", default=None, help="for --store redis; a throwaway redis-server is started when none answers "
              "there [settings.redis_url]")
@click.option("--seconds", type=float, default=4.0, show_default=True, help="load per measured rate")
@click.option("--p99-limit-ms", type=float, default=10.0, show_default=True,
              help="a rate counts as sustained with p99 at most this (and >= 95 % achieved, no errors)")
@click.option("--pin/--no-pin", "pinned", default=True, show_default=True,
              help="with two or more cores: the server on a core of its own, hey, Redis and the bench on the others "
                   "(the JSON's `cores`); --no-pin: all share every core")
@click.option("--ranker", type=click.Choice(list(RANKERS)), default="bench", show_default=True,
              help="the served MCCA's sizes: the bench's small one (embeddings 16, attention 16, MLP 32-16) or MCCA's "
                   "defaults (64, 36, 200-80)")
@click.option("--json", "as_json", is_flag=True, help="print only the JSON line")
def command(store: str, redis_url: str | None, seconds: float, p99_limit_ms: float, pinned: bool, ranker: str,
            as_json: bool) -> None:
    """/rank and /features under `hey` at 100, 500, 1,000 requests/s and up, against raw Feast reads."""
    from sidcore.config import get_settings

    s = get_settings()
    work = s.home / "bench" / f"online-{time.strftime('%Y%m%dT%H%M%S')}"
    work.mkdir(parents=True, exist_ok=True)
    split = core_split() if pinned else None
    allowed = sorted(os.sched_getaffinity(0))
    with ExitStack() as stack:
        if split:  # this process first: the Redis and hey it starts inherit its cores
            os.sched_setaffinity(0, split[1])
            stack.callback(os.sched_setaffinity, 0, allowed)
        url = stack.enter_context(redis_at(redis_url or s.redis_url, work)) if store == "redis" else s.redis_url
        s = s.model_copy(update={"feast_root": work / "feast", "registry_root": work / "registry",
                                 "feast_profile": "local" if store == "sqlite" else "redis", "redis_url": url})
        out = run_online(s, work, seconds, p99_limit_ms, split=split, ranker=ranker)
    if not as_json:
        click.echo(render(out), err=True)
    click.echo(json.dumps(out))


def render(out: dict[str, Any]) -> str:
    """The run as a Markdown table (what docs/scaling.md quotes)."""
    lines = ["| endpoint | target rps | achieved rps | p50 ms | p99 ms | p99.9 ms | errors | server CPU ms/req | hey CPU ms/req |",
             "|---|---|---|---|---|---|---|---|---|"]

    def cpu(p: dict[str, Any]) -> str:
        return f"{p.get('server_cpu_ms_per_request', '—')} | {p.get('hey_cpu_ms_per_request', '—')}"

    for name in ("rank", "features_1", "features_100"):
        for p in [*out[name]["points"], out[name]["unthrottled_16_connections"]]:
            target = "unthrottled (16 conn.)" if p["target_rps"] is None else f"{p['target_rps']:,}"
            lines.append(f"| {name} | {target} | {p['achieved_rps']:,} | {p['p50_ms']} | {p['p99_ms']} | {p['p999_ms']} | {p['errors']} | "
                         f"{cpu(p)} |")
    shared = out["rank"].get("shared_cores_at_1000")
    if shared:
        lines.append(f"| rank, server sharing its core with hey | 1,000 | {shared['achieved_rps']:,} | {shared['p50_ms']} | "
                     f"{shared['p99_ms']} | {shared['p999_ms']} | {shared['errors']} | {cpu(shared)} |")
    c = out["rank"]["cold_cache"]
    lines.append(f"| rank, cold (no cache, no item vectors) | {c['target_rps']} | {c['achieved_rps']} | {c['p50_ms']} | {c['p99_ms']} | "
                 f"{c['p999_ms']} | {c['errors']} | {cpu(c)} |")
    ref = out["rank"]["reference_path"]
    for label, p in (("100", ref["at_100"]), ("unthrottled (16 conn.)", ref["unthrottled_16_connections"])):
        lines.append(f"| rank, reference path (model forward, no cache) | {label} | {p['achieved_rps']} | {p['p50_ms']} | "
                     f"{p['p99_ms']} | {p['p999_ms']} | {p['errors']} | {cpu(p)} |")
    for n in ("1", "100"):
        r = out[f"raw_feast_{n}"]
        lines.append(f"| raw Feast read, {n} track(s), in-process, back to back | — | — | {r['p50_ms']} | {r['p99_ms']} | {r['p999_ms']} "
                     "| — | — | — |")
    lines += ["", f"max sustained /rank: {out['rank']['max_sustained_rps']:,} rps (p99 <= {out['p99_limit_ms']} ms); "
                  f"/features 1: {out['features_1']['max_sustained_rps']:,}; /features 100: {out['features_100']['max_sustained_rps']:,}; "
                  f"SID cache hit rate {out['cache_hit_rate']}; scoring µs (model forward / fast path): "
                  f"{out['scoring_us']['model_forward']} / {out['scoring_us']['fast_path']} (fast path on a ranker of MCCA's "
                  f"default sizes: {out['scoring_us']['fast_path_default_sizes']}); /rank unthrottled, fast / reference path: "
                  f"{out['rank']['unthrottled_over_reference_path']}x; load generator {out['load_generator']}; "
                  + f"ranker {out['ranker']}; "
                  + (f"cores: the server on {out['cores']['server']}, hey, Redis and the bench on {out['cores']['hey_redis_bench']}"
                     if isinstance(out.get("cores"), dict) else "cores: all shared")]
    return "\n".join(lines)
