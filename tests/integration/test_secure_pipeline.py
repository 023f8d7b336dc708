"""Secure by configuration (issue 35), on real components: the project's broker with a SASL_SSL
(SCRAM-SHA-512) listener and a throwaway CA, a redis-server that takes TLS only and an ACL user
with a password, the pipeline's worker processes between them; refusals in one line; and a
planted secret that must appear nowhere it could leak."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import SecretStr

from sidcore.catalog import audio_tracks, lastfm_tracks
from sidcore.config import KafkaSettings, Settings, dump_settings
from sidstream.harness import PipelineRun, wait_until_readable
from tests.plugins.kafka import SECURE_KAFKA_PASSWORD
from tests.plugins.paths import AUDIO_DIR

pytestmark = [pytest.mark.integration, pytest.mark.redis, pytest.mark.slow]
SERVE_TOKEN = "PLANTED-serve-t0ken-c4e1"


@pytest.fixture
def secure_run(tmp_path, secure_kafka_broker, secure_redis_server):
    """A registered codebook version and a PipelineRun whose every client logs in over TLS."""
    from encoders import load_audio_encoder, load_text_encoder
    from encoders.catalog import audio_windows, track_text
    from trainer.jobs import bootstrap_codebooks

    if not AUDIO_DIR.is_dir():
        pytest.skip(f"{AUDIO_DIR} missing: apt-get install singularity-music")
    url, ca_file, password = secure_redis_server
    s = Settings(home=tmp_path / "home", kafka=secure_kafka_broker.settings, feast_profile="redis", redis_url=url,
                 redis_password=SecretStr(password), redis_ca_file=ca_file, serve={"tokens": SERVE_TOKEN},
                 stream={"batch_size": 16, "batch_timeout_s": 0.1}, encoders={"audio_model": "logmel"},
                 codebook={"codebook_size": 16})
    te, ae = load_text_encoder(), load_audio_encoder("logmel")
    catalog, audio = lastfm_tracks(None, 200), audio_tracks(AUDIO_DIR, 3)
    audio_X, owners = audio_windows([t.audio_path for t in audio], ae, 10.0)
    version = bootstrap_codebooks(s, te.encode([track_text(t) for t in catalog]), te.model_id, audio_X,
                                  te.encode([track_text(audio[i]) for i in owners.tolist()]), ae.model_id)
    run = PipelineRun(s, tmp_path / "run")
    run.create_topics()
    yield run, catalog, version
    run.stop_workers()


def test_pipeline_end_to_end_over_sasl_ssl_into_redis_with_password_over_tls_and_no_secret_leaks(secure_run):
    from fastapi.testclient import TestClient

    from sidstream.serve import create_app
    from streams.sinks.store import open_store

    run, catalog, version = secure_run
    s = run.settings
    assert s.kafka.security_protocol == "SASL_SSL" and s.redis.tls and s.redis.password
    run.start_workers()
    cmdlines = [Path(f"/proc/{p.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode() for p in run.processes.values()]
    tracks = catalog[:30]
    producer = run.producer()
    produced = producer.send_metadata(tracks)
    producer.flush()
    store = open_store(s.feast_dir, profile=s.feast_profile, redis_url=s.redis)
    latency = wait_until_readable(store, {t.track_id: "text_sid" for t in tracks}, produced, 180, version.version)
    assert len(latency) == len(tracks)  # every track went Kafka (SASL_SSL) -> workers -> Redis (ACL user, TLS)
    assert len(run.assigned(timeout_s=20)) >= len(tracks)  # read back over SASL_SSL too

    client = TestClient(create_app(s, store=store, watch=False))
    health = client.get("/health")
    status = subprocess.run([sys.executable, "-m", "sidstream.cli", "--settings", str(run.settings_file()), "status",
                             "--json"], capture_output=True, text=True, timeout=120)
    run.stop_workers()
    places = {
        "worker command lines": "\n".join(cmdlines),
        "settings file for workers": (run.run_dir / "settings.json").read_text(),
        "worker logs": "\n".join(p.read_text(errors="replace") for p in run.run_dir.glob("worker-*.log")),
        "feature_store.yaml": (s.feast_dir / "feature_store.yaml").read_text(),
        "sidstream status": status.stdout + status.stderr,
        "/health": health.text,
        "settings repr": repr(s) + s.model_dump_json(),
    }
    assert status.returncode == 0, status.stderr[-800:]
    assert health.status_code == 200, health.text
    for secret in (SECURE_KAFKA_PASSWORD, s.redis.password, SERVE_TOKEN):
        leaked = [where for where, text in places.items() if secret in text]
        assert not leaked, f"a planted secret appears in {leaked}"


def _refused(settings: Settings, tmp_path: Path) -> tuple[int, list[str], float]:
    path = dump_settings(settings, tmp_path / "settings.json")
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "sidstream.cli", "--settings", str(path), "topics", "list"],
                          capture_output=True, text=True, timeout=60)
    return proc.returncode, [line for line in proc.stderr.splitlines() if line.strip()], time.monotonic() - started


@pytest.mark.parametrize("case", ["wrong password", "wrong CA", "plaintext client"])
def test_wrong_password_wrong_ca_and_plaintext_are_refused_in_one_line_fast(case, secure_kafka_broker, tmp_path):
    from streams.admin.certs import make_server_cert

    good = secure_kafka_broker.settings
    explicit = good.model_dump(include=good.model_fields_set)
    change: dict[str, object] = {
        "wrong password": {"sasl_password": "PLANTED-wrong-pw-0000", "sasl_password_file": None},
        "wrong CA": {"ssl_ca_file": make_server_cert(tmp_path / "other-ca", ca_name="someone else's CA").ca_file},
        "plaintext client": {"security_protocol": "PLAINTEXT"},
    }[case]
    kafka = KafkaSettings(**{**explicit, **change})
    rc, lines, seconds = _refused(Settings(home=tmp_path / "home", kafka=kafka), tmp_path)
    assert rc == 1
    assert len(lines) == 1, lines
    expected = {"wrong password": "wrong username or password", "wrong CA": "not signed by a trusted CA",
                "plaintext client": "another security protocol"}[case]
    assert expected in lines[0] and "Traceback" not in lines[0]
    assert "PLANTED" not in lines[0]
    assert seconds < 20, f"took {seconds:.1f}s"
