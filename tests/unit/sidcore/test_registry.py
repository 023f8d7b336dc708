import json

import pytest

from sidcore.registry import Registry, RegistryError

pytestmark = pytest.mark.unit


def test_register_promote_and_immutability(tmp_path):
    reg = Registry(tmp_path)

    def write(d):
        (d / "weights.bin").write_bytes(b"abc")
        return {"metrics": {"auc": 0.7}}

    v1 = reg.register("codebooks", write, version="v1")
    assert (v1.path / "weights.bin").read_bytes() == b"abc"
    assert v1.manifest["version"] == "v1" and v1.manifest["metrics"]["auc"] == 0.7
    assert reg.live("codebooks") is None
    reg.promote("codebooks", "v1")
    assert reg.live("codebooks").version == "v1"
    with pytest.raises(RegistryError, match="immutable"):
        reg.register("codebooks", write, version="v1")
    with pytest.raises(RegistryError):
        reg.promote("codebooks", "nope")


def test_crashed_writer_leaves_no_version(tmp_path):
    reg = Registry(tmp_path)

    def boom(d):
        (d / "partial").write_text("x")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        reg.register("ranker", boom)
    assert reg.versions("ranker") == []
    assert not [p for p in (tmp_path / "ranker").iterdir() if p.name.startswith(".")]


def test_versions_sorted_and_manifest_json(tmp_path):
    reg = Registry(tmp_path)
    for v in ("v2", "v1", "v3"):
        reg.register("ranker", lambda d: {}, version=v)
    assert [v.version for v in reg.versions("ranker")] == ["v1", "v2", "v3"]
    assert json.loads((tmp_path / "ranker" / "v2" / "manifest.json").read_text())["kind"] == "ranker"
