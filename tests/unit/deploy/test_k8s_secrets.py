"""The manifests run sidstream secured by configuration (docs/security.md): Kafka over SASL_SSL
with SCRAM, Redis with a password, serve with bearer tokens; every secret comes from a mounted
Kubernetes Secret as a `*_file` setting, never a value in the ConfigMap or on a command line."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest
import yaml

from sidcore.config import ENV_PREFIX

pytestmark = pytest.mark.unit
K8S = Path(__file__).resolve().parents[3] / "deploy" / "k8s"


def _docs() -> dict[tuple[str, str], dict]:
    return {(d["kind"], d["metadata"]["name"]): d for p in sorted(K8S.glob("*.yaml")) if p.name != "kustomization.yaml"
            for d in yaml.safe_load_all(p.read_text()) if d}


def _pod_spec(doc: dict) -> dict:
    spec = doc["spec"]
    if doc["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec["template"]["spec"]


def _sidstream_containers() -> list[tuple[str, dict, dict]]:
    """(name, container, pod spec) of every container that takes the sidstream ConfigMap."""
    out = []
    for (kind, name), doc in _docs().items():
        if kind in ("Deployment", "CronJob", "StatefulSet"):
            pod = _pod_spec(doc)
            for c in pod["containers"]:
                if any(e.get("configMapRef", {}).get("name") == "sidstream-config" for e in c.get("envFrom", [])):
                    out.append((f"{kind}/{name}", c, pod))
    return out


def test_the_config_map_holds_no_secret_and_points_at_files() -> None:
    config = _docs()[("ConfigMap", "sidstream-config")]["data"]
    secretish = [k for k in config if any(w in k for w in ("PASSWORD", "TOKEN", "SECRET")) and not k.endswith("_FILE")]
    assert secretish == []
    assert config[f"{ENV_PREFIX}KAFKA__SECURITY_PROTOCOL"] == "SASL_SSL"
    assert config[f"{ENV_PREFIX}KAFKA__SASL_MECHANISM"] == "SCRAM-SHA-512"
    for key in ("KAFKA__SASL_PASSWORD_FILE", "KAFKA__SSL_CA_FILE", "REDIS_PASSWORD_FILE"):
        assert config[f"{ENV_PREFIX}{key}"].startswith("/etc/sidstream/"), key


def test_every_sidstream_container_mounts_the_secret_files_its_settings_name() -> None:
    config = _docs()[("ConfigMap", "sidstream-config")]["data"]
    containers = _sidstream_containers()
    assert len(containers) == 7  # 5 workers, serve, the trainer
    for name, c, pod in containers:
        env = {**config, **{e["name"]: e["value"] for e in c.get("env", []) if "value" in e}}
        files = [v for k, v in env.items() if k.endswith("_FILE")]
        secret_volumes = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
        mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
        for f in files:
            folder = str(PurePosixPath(f).parent)
            assert folder in mounts and mounts[folder] in secret_volumes, f"{name}: {f} is not on a mounted Secret"
        assert all(m.get("readOnly") for m in c["volumeMounts"] if m["name"] in secret_volumes), name
        assert not any(w in " ".join(c["command"]).lower() for w in ("password", "token")), name
    serve = next(c for n, c, _ in containers if n == "Deployment/serve")
    assert {e["name"] for e in serve["env"]} >= {f"{ENV_PREFIX}SERVE__TOKENS_FILE"}


def test_kafka_listens_with_tls_and_scram_and_keda_logs_in() -> None:
    docs = _docs()
    listeners = docs[("Kafka", "sidstream")]["spec"]["kafka"]["listeners"]
    assert all(lst["tls"] and lst["authentication"]["type"] == "scram-sha-512" for lst in listeners)
    assert docs[("KafkaUser", "sidstream")]["spec"]["authentication"]["type"] == "scram-sha-512"
    config = docs[("ConfigMap", "sidstream-config")]["data"]
    assert {str(lst["port"]) for lst in listeners} == {config[f"{ENV_PREFIX}KAFKA__PORT"]}
    auths = {name for kind, name in docs if kind == "TriggerAuthentication"}
    for (kind, name), doc in docs.items():
        if kind == "ScaledObject":
            for t in doc["spec"]["triggers"]:
                assert t["authenticationRef"]["name"] in auths, name
                assert t["metadata"]["bootstrapServers"].endswith(":" + config[f"{ENV_PREFIX}KAFKA__PORT"]), name


def test_redis_requires_the_password_from_its_secret() -> None:
    redis = _docs()[("StatefulSet", "sidstream-redis")]
    c = _pod_spec(redis)["containers"][0]
    assert "requirepass" in c["command"][-1] and "/etc/redis-auth/password" in c["command"][-1]
    assert next(e for e in c["env"] if e["name"] == "REDISCLI_AUTH")["valueFrom"]["secretKeyRef"]["name"] == "sidstream-redis-auth"
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    generated = {g["name"] for g in kust["secretGenerator"]}
    assert {"sidstream-redis-auth", "sidstream-serve-tokens", "sidstream-keda-kafka"} <= generated
