"""serve's access and size limits (sidstream.serve_guard), on the real FastAPI app over a SQLite store."""

from __future__ import annotations

import asyncio
import os

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from sidcore.config import Settings
from sidstream.serve_guard import Guard, TokenSource

pytestmark = pytest.mark.unit


@pytest.fixture
def app_with(tmp_path):
    from sidstream.serve import create_app

    def make(**serve):
        s = Settings(home=tmp_path / "home", serve=serve)
        return TestClient(create_app(s, watch=False))
    return make


def test_every_route_but_the_probes_wants_the_token(app_with):
    client = app_with(tokens=SecretStr("tok-a,tok-b"), max_body_bytes=2048)
    assert client.get("/health").status_code in (200, 503)  # open: a probe carries no token
    assert client.get("/ping").status_code == 200
    for method, path in (("get", "/metrics"), ("post", "/features"), ("post", "/rank")):
        assert getattr(client, method)(path).status_code == 401
        assert getattr(client, method)(path, headers={"Authorization": "Bearer tok-c"}).status_code == 401
    ok = client.post("/features", json={"user_ids": ["u"]}, headers={"Authorization": "Bearer tok-b"})
    assert ok.status_code == 200
    assert client.get("/metrics", headers={"Authorization": "Bearer tok-a"}).status_code == 200


def test_token_file_rotates_without_restart(app_with, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("old-token\n")
    client = app_with(tokens_file=tokens)
    auth = {"Authorization": "Bearer old-token"}
    assert client.get("/metrics", headers=auth).status_code == 200
    tokens.write_text("new-token\n")
    os.utime(tokens, (1, 1))  # a different mtime even within the clock's resolution
    assert client.get("/metrics", headers=auth).status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer new-token"}).status_code == 200


def test_oversized_body_is_refused_by_content_length_before_reading():
    async def app(scope, receive, send):  # never reached
        raise AssertionError("the app ran")

    read, sent = [], []

    async def receive():
        read.append(1)
        return {"type": "http.request", "body": b"x", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "path": "/rank", "headers": [(b"content-length", b"50000000")]}
    asyncio.run(Guard(app, TokenSource(), 4096)(scope, receive, send))
    assert sent[0]["status"] == 413 and not read


def test_streamed_body_over_the_limit_is_refused(app_with):
    client = app_with(max_body_bytes=2048)
    chunks = (b"x" * 1024 for _ in range(10))  # no Content-Length: chunked
    assert client.post("/features", content=chunks).status_code == 413
    assert client.post("/features", content=b"x" * 5000).status_code == 413


def test_top_k_and_candidates_are_bounded(app_with):
    client = app_with(max_top_k=5, max_candidates=3)
    big_k = client.post("/rank", json={"user_id": "u", "candidate_track_ids": ["a"], "top_k": 6})
    assert big_k.status_code == 422 and "max_top_k" in big_k.text
    many = client.post("/rank", json={"user_id": "u", "candidate_track_ids": ["a", "b", "c", "d"]})
    assert many.status_code == 413


def test_hot_routes_answer_as_the_app_would(tmp_path, monkeypatch):
    """POST /rank and /features are answered in front of FastAPI's stack (ServeApp -> Measure ->
    Guard -> HotLane): their refusals answer {"detail"} with FastAPI's statuses, other methods
    405, an unexpected error 500 (and is raised on for the server's log), and every answer is
    counted in /metrics by endpoint and status."""
    import sidstream.serve as serve

    app = serve.create_app(Settings(home=tmp_path / "home"), watch=False)
    client = TestClient(app, raise_server_exceptions=False)
    assert client.get("/rank").status_code == 405 and client.get("/features").status_code == 405
    bad = client.post("/rank", content=b"{not json", headers={"content-type": "application/json"})
    assert bad.status_code == 422 and isinstance(bad.json()["detail"], list)
    assert client.post("/rank", json={"user_id": "u", "candidate_track_ids": ["t"]}).json() == {
        "detail": "no live ranker: run `sidstream train ranker` (or `train all`)"}

    def broken(model, body):
        raise RuntimeError("a bug")

    monkeypatch.setattr(serve, "parse", broken)
    failed = client.post("/features", json={"user_ids": ["u"]})
    assert failed.status_code == 500 and failed.text == "Internal Server Error"
    with pytest.raises(RuntimeError, match="a bug"):  # raised on, as Starlette's error middleware does
        TestClient(app).post("/features", json={"user_ids": ["u"]})
    metrics = client.get("/metrics").text
    for endpoint, status, n in (("/rank", "405", 1), ("/rank", "422", 1), ("/rank", "503", 1), ("/features", "500", 2)):
        assert f'sidstream_serve_requests_total{{endpoint="{endpoint}",status="{status}"}} {n}.0' in metrics
