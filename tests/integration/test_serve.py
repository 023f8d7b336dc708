"""`sidstream serve` over HTTP against the real SQLite and Redis online stores with a trained
MCCA ranker: features, ranking (cold and unknown tracks, unknown users), clear 4xx, health,
metrics, a version switch under load with zero failed requests; and Feast's own feature server
(`feast serve`) answering for the `ranker_features` service on the same repo."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from sidcore.config import Settings
from sidstream.bench.online import ServerThread, _free_port, prepare_online
from sidstream.serve import create_app
from streams.sinks.reader import read_histories, read_sids, read_track_sids
from streams.sinks.store import open_store
from trainer.serving import rank

pytestmark = pytest.mark.integration


@pytest.fixture(params=["local", pytest.param("redis", marks=pytest.mark.redis)])
def served(request, tmp_path):
    redis_url = request.getfixturevalue("redis_server") if request.param == "redis" else "127.0.0.1:6379"
    s = Settings(home=tmp_path / "home", feast_root=tmp_path / "feast", registry_root=tmp_path / "registry",
                 feast_profile=request.param, redis_url=redis_url,
                 serve={"max_candidates": 150, "max_ids": 300, "reload_s": 0.3})
    ids = prepare_online(s, tmp_path / "work", n_users=80, n_items=200, n_new=20)
    store = open_store(s.feast_dir, profile=s.feast_profile, redis_url=s.redis_url)
    app = create_app(s, store=store)
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        yield s, ids, store, client, app


def test_features_and_rank_over_http(served):
    s, ids, store, client, _ = served
    tracks = ids["items"][:5] + ids["new"][:2] + ["nobody:1"]
    r = client.post("/features", json={"track_ids": tracks, "user_ids": [ids["users"][0], "nobody"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["codebook_version"] == ids["codebook_version"]
    raw = read_sids(store, tracks, ids["codebook_version"]).set_index("track_id")
    for row in body["tracks"]:
        if row["track_id"] == "nobody:1":
            assert row["found"] is False and row["text_sid"] is None
        else:
            assert row["found"] and row["text_sid"] == list(raw.at[row["track_id"], "text_sid"])
    user, nobody = body["users"]
    assert user["found"] and len(user["history"]) > 0 and nobody == {"user_id": "nobody", "found": False, "history": []}

    candidates = ids["items"][:80] + ids["new"] + ["nobody:1", "nobody:2"]
    r = client.post("/rank", json={"user_id": ids["users"][0], "candidate_track_ids": candidates, "top_k": 10})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["ranker_version"] == ids["ranker_version"] and out["codebook_version"] == ids["codebook_version"]
    assert out["unknown"] == ["nobody:1", "nobody:2"]  # listed, never scored at random
    assert len(out["scored"]) == 10 and out["history_len"] > 0
    scores = [x["score"] for x in out["scored"]]
    assert scores == sorted(scores, reverse=True) and all(0 < p < 1 for p in scores)
    full = client.post("/rank", json={"user_id": ids["users"][0], "candidate_track_ids": candidates}).json()
    assert len(full["scored"]) == len(candidates) - 2
    cold = {x["track_id"]: x for x in full["scored"] if x["cold"]}
    # never seen in training (the new tracks, and the data set's test-only items): scored from their SIDs alone
    assert set(ids["new"]) <= set(cold) and len(cold) < len(full["scored"])
    assert len({round(x["score"], 6) for x in cold.values()}) > 1  # and the SIDs make a difference
    anon = client.post("/rank", json={"user_id": "brand-new-user", "candidate_track_ids": ids["items"][:10]}).json()
    assert anon["history_len"] == 0 and len(anon["scored"]) == 10


def test_rank_fast_path_equals_the_models_forward_over_http(served):
    """/rank (precomputed item vectors, cached SIDs, numpy scoring) answers what the model's own
    forward (`trainer.serving.rank` on the rows read straight from the store) gives."""
    s, ids, store, client, app = served
    snap = app.state.serving.snapshot
    assert snap.fast is not None and len(snap.fast.rows) > 0  # the vocabulary's vectors were precomputed
    for user in ids["users"][:3] + ["brand-new-user"]:
        candidates = ids["items"][::3][:60] + ids["new"][:10] + ["nobody:1"]
        r = client.post("/rank", json={"user_id": user, "candidate_track_ids": candidates})
        assert r.status_code == 200, r.text
        got = r.json()
        history = read_histories(store, [user]).get(user, [])[-snap.history_len :]
        ref = rank(snap, read_track_sids(store, [*candidates, *history], snap.ranker_codebooks), history, candidates)
        assert got["unknown"] == ref["unknown"] == ["nobody:1"] and got["history_len"] == ref["history_len"]
        want = {x["track_id"]: (x["score"], x["cold"]) for x in ref["scored"]}
        assert [x["track_id"] for x in got["scored"]] and {x["track_id"] for x in got["scored"]} == set(want)
        for x in got["scored"]:
            assert x["cold"] == want[x["track_id"]][1]
            assert abs(x["score"] - want[x["track_id"]][0]) < 1e-5
    # serve.fast_path = false: the same app answers by the model's forward, the same scores
    slow = create_app(s.model_copy(update={"serve": s.serve.model_copy(update={"fast_path": False})}), store=store, watch=False)
    body = {"user_id": ids["users"][0], "candidate_track_ids": ids["items"][:40] + ids["new"][:5]}
    with ServerThread(slow) as server, httpx.Client(base_url=server.url, timeout=30) as other:
        a, b = client.post("/rank", json=body).json(), other.post("/rank", json=body).json()
    assert [x["track_id"] for x in a["scored"]] and {x["track_id"] for x in a["scored"]} == {x["track_id"] for x in b["scored"]}
    ref_scores = {x["track_id"]: x["score"] for x in b["scored"]}
    assert all(abs(x["score"] - ref_scores[x["track_id"]]) < 1e-5 for x in a["scored"])
    # serve.rank_inline_candidates = 0: the fast path on a pool thread instead of the event loop, the same answer
    assert len(body["candidate_track_ids"]) <= s.serve.rank_inline_candidates  # `a` was scored on the event loop
    pooled = create_app(s.model_copy(update={"serve": s.serve.model_copy(update={"rank_inline_candidates": 0})}), store=store,
                        watch=False)
    with ServerThread(pooled) as server, httpx.Client(base_url=server.url, timeout=30) as other:
        assert other.post("/rank", json=body).json() == a


def test_bad_requests_get_a_clear_4xx(served):
    _, ids, _, client, _ = served
    r = client.post("/rank", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "JSON" in r.text
    r = client.post("/rank", json={"candidate_track_ids": ["a"]})
    assert r.status_code == 422 and "user_id" in r.text
    r = client.post("/rank", json={"user_id": "u", "candidate_track_ids": [f"t{i}" for i in range(151)]})
    assert r.status_code == 413 and "limit is 150" in r.json()["detail"]
    r = client.post("/features", json={})
    assert r.status_code == 422 and "track_ids" in r.json()["detail"]
    r = client.post("/features", json={"track_ids": [f"t{i}" for i in range(301)]})
    assert r.status_code == 413


def test_health_and_metrics(served):
    s, ids, _, client, _ = served
    h = client.get("/health")
    assert h.status_code == 200
    assert h.json() | {} == h.json() and h.json()["store_ok"] and h.json()["ranker_version"] == ids["ranker_version"]
    assert h.json()["live_codebook_version"] == ids["codebook_version"]
    gate = h.json()["ranker_gate"]  # the live ranker's gate metrics, from its manifest
    assert 0 <= gate["candidate_auc"] <= 1 and len(gate["candidate_interval"]) == 2 and gate["rows"] > 0
    client.post("/features", json={"track_ids": ids["items"][:2]})
    client.post("/features", json={"track_ids": ids["items"][:2]})  # both rows from the SID cache now
    m = client.get("/metrics").text
    assert 'sidstream_serve_requests_total{endpoint="/features",status="200"}' in m
    assert "sidstream_serve_sid_cache_hits_total 2.0" in m and "sidstream_serve_sid_cache_misses_total 2.0" in m
    assert "sidstream_serve_sid_cache_entries 2.0" in m and "sidstream_serve_sid_cache_hit_rate 0.5" in m
    assert f"sidstream_live_ranker_auc {float(gate['candidate_auc'])}" in m


def test_version_switch_under_load_fails_no_request(served, tmp_path):
    """A newly promoted ranker is picked up without a restart while /rank is under load."""
    from trainer.jobs import JobConfig, train_ranker
    from trainer.models import ModelConfig
    from trainer.train_loop import TrainConfig

    s, ids, _, client, app = served
    stop = threading.Event()
    results: list[tuple[int, str | None]] = []
    body = {"user_id": ids["users"][1], "candidate_track_ids": ids["items"][:50] + ids["new"][:5]}

    def hammer() -> None:
        with httpx.Client(base_url=str(client.base_url), timeout=30) as c:
            while not stop.is_set():
                r = c.post("/rank", json=body)
                results.append((r.status_code, r.json().get("ranker_version") if r.status_code == 200 else r.text))

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    new = train_ranker(JobConfig(registry=s.registry_dir, work_dir=tmp_path / "jobs2", data=tmp_path / "work" / "data",
                                 model=ModelConfig(kind="mcca", emb_dim=16, att_hidden=(16,), mlp_hidden=(32, 16)),
                                 train=TrainConfig(epochs=1, batch_size=256, checkpoint_every=1000, seed=5),
                                 force_gate=True))  # the switch under load is under test, not the ranker gate
    assert new is not None and new.version != ids["ranker_version"]
    deadline = time.monotonic() + 20
    while app.state.serving.snapshot.ranker_version != new.version and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join()
    failed = [r for r in results if r[0] != 200]
    assert not failed, failed[:3]
    versions = [v for _, v in results]
    assert versions[0] == ids["ranker_version"] and versions[-1] == new.version
    assert set(versions) == {ids["ranker_version"], new.version} and len(results) > 20


def test_feast_feature_server_answers_for_the_ranker_service(tmp_path):
    """`feast serve` on the project's repo answers get-online-features for `ranker_features`."""
    s = Settings(home=tmp_path / "home", feast_root=tmp_path / "feast", registry_root=tmp_path / "registry")
    ids = prepare_online(s, tmp_path / "work", n_users=40, n_items=100, n_new=5)
    port = _free_port()
    feast = Path(sys.executable).with_name("feast")
    proc = subprocess.Popen([str(feast), "-c", str(s.feast_dir), "serve", "-h", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
            assert time.monotonic() < deadline, "feast serve did not come up"
            time.sleep(0.5)
        tracks = ids["items"][:3]
        r = httpx.post(f"{url}/get-online-features", timeout=30, json={
            "feature_service": "ranker_features",
            "entities": {"track_id": tracks, "codebook_version": [ids["codebook_version"]] * 3, "user_id": ids["users"][:3]},
        })
        assert r.status_code == 200, r.text
        out = r.json()
        names = out["metadata"]["feature_names"]
        text = out["results"][names.index("text_sid")]["values"]
        history = out["results"][names.index("history_item_ids")]["values"]
        expected = read_sids(open_store(s.feast_dir), tracks, ids["codebook_version"])["text_sid"].tolist()
        assert [list(v) for v in text] == [list(v) for v in expected]
        assert all(h for h in history)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_two_uvicorn_workers_serve(served, tmp_path):
    """`sidstream serve` with serve.workers = 2: two worker processes under the parent, loaded
    with the parent's settings (through the settings file), answering /rank."""
    import psutil

    from sidstream.bench.online import ServerProcess

    s, ids, _, _, _ = served
    two = s.model_copy(update={"serve": s.serve.model_copy(update={"workers": 2})})
    with ServerProcess(two, tmp_path / "workers") as server, httpx.Client(base_url=server.url, timeout=30) as c:
        body = {"user_id": ids["users"][0], "candidate_track_ids": ids["items"][:20]}
        answers = [c.post("/rank", json=body) for _ in range(10)]
        assert all(r.status_code == 200 for r in answers) and len(answers[0].json()["scored"]) == 20
        assert c.get("/health").json()["ranker_version"] == ids["ranker_version"]
        workers = [p for p in psutil.Process(server.proc.pid).children(recursive=True)
                   if any("spawn_main" in part for part in p.cmdline())]
        assert len(workers) == 2, [p.cmdline() for p in psutil.Process(server.proc.pid).children(recursive=True)]


@pytest.mark.redis
def test_a_hanging_store_fails_requests_with_503_and_serve_recovers(own_redis_server, tmp_path):
    """A Redis that stops answering (SIGSTOP: it holds the connection and never replies) fails
    /rank and /features with 503 and the reason after about two serve.store_timeout_s (serve's
    store retries once, at once: redis-py's default of 3 retries with back-off took 6.1 s at a
    0.3 s timeout), instead of holding the event loop until the OS gives up; /ping answers
    between reads, and the same server answers 200 again once Redis resumes."""
    url, proc = own_redis_server
    timeout_s = 0.3
    s = Settings(home=tmp_path / "home", feast_root=tmp_path / "feast", registry_root=tmp_path / "registry",
                 feast_profile="redis", redis_url=url, serve={"store_timeout_s": timeout_s, "reload_s": 30})
    ids = prepare_online(s, tmp_path / "work", n_users=40, n_items=100, n_new=10)
    app = create_app(s)  # its own store, opened with the timeout
    rank_body = {"user_id": ids["users"][0], "candidate_track_ids": ids["items"][:30]}
    features_body = {"user_ids": [ids["users"][1]]}
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        assert client.post("/rank", json=rank_body).status_code == 200
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            for path, body in (("/rank", rank_body), ("/features", features_body)):
                t0 = time.monotonic()
                r = client.post(path, json=body)
                took = time.monotonic() - t0
                assert r.status_code == 503, r.text
                assert r.json()["detail"].startswith("online store unavailable: TimeoutError"), r.text
                assert took < 3 * timeout_s + 0.5, f"{path} took {took:.1f}s against a {timeout_s}s timeout"
                assert client.get("/ping").status_code == 200
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        deadline = time.monotonic() + 10
        while (r := client.post("/rank", json=rank_body)).status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert r.status_code == 200, r.text
        assert client.post("/features", json=features_body).status_code == 200
