"""`feast apply` accepts feature_repo/ as it is in the tree, and every profile is a valid config."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
FEATURE_REPO = REPO_ROOT / "feature_repo"


def test_feast_cli_applies_the_feature_repo_as_is(tmp_path):
    feast = Path(sys.executable).parent / "feast"
    if not feast.exists():
        pytest.skip(f"no feast console script beside {sys.executable}")
    checkout = tmp_path / "checkout"
    shutil.copytree(
        FEATURE_REPO, checkout / "feature_repo", ignore=shutil.ignore_patterns("data", "__pycache__")
    )
    first = subprocess.run(
        [str(feast), "-c", "feature_repo", "apply"], cwd=checkout, capture_output=True, text=True, timeout=120
    )
    assert first.returncode == 0, first.stdout + first.stderr
    for name in (
        "entity track",
        "entity user",
        "feature view track_sids",
        "feature view user_history",
        "feature service ranker_features",
    ):
        assert f"Created {name}" in first.stdout, first.stdout
    assert (checkout / "feature_repo" / "data" / "registry.db").exists()
    assert (checkout / "feature_repo" / "data" / "online.db").exists()


@pytest.mark.parametrize("yaml_path", ["feature_store.yaml", "profiles/redis/feature_store.yaml",
                                       "profiles/redis_cluster/feature_store.yaml"])
def test_profiles_are_valid_feast_configs(yaml_path):
    from feast.repo_config import RepoConfig

    raw = yaml.safe_load((FEATURE_REPO / yaml_path).read_text())
    config = RepoConfig(repo_path=FEATURE_REPO, **raw)
    assert config.project == "sidstream"
    assert config.online_store.type == ("redis" if "redis" in yaml_path else "sqlite")
    assert not Path(raw["registry"]).is_absolute()  # relative to the repo dir


def test_materialised_repo_matches_the_definitions(tmp_path):
    from streams.sinks.store import load_definitions, open_store

    store = open_store(tmp_path / "feast")
    names = {type(o).__name__ + ":" + o.name for o in load_definitions(FEATURE_REPO)}
    assert names == {
        "Entity:track", "Entity:codebook", "Entity:user", "PushSource:track_sids_push", "PushSource:user_history_push",
        "FileSource:track_sids_file", "FileSource:user_history_file", "FeatureView:track_sids",
        "FeatureView:user_history", "FeatureService:ranker_features",
    }  # fmt: skip
    views = store.list_feature_views()
    assert {fv.name for fv in views} == {"track_sids", "user_history"}
    for fv in views:  # FeastSink writes <repo>/data/offline/<view>: the batch sources must agree
        assert fv.batch_source.path == f"data/offline/{fv.name}"
    assert "entities" not in sys.modules  # loading the repo leaves no generic module names behind
