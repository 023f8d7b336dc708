import json

import pytest
from click.testing import CliRunner

from sidstream.commands.train import data, eval_cmd
from trainer.dataset import load_dataset, write_dataset
from trainer.synthetic import make_synthetic

pytestmark = pytest.mark.unit


def test_eval_quick_json_on_synthetic_dataset(tmp_path):
    write_dataset(tmp_path / "syn", make_synthetic(n_users=60, n_items=120, events_per_user=16, seed=4))
    result = CliRunner().invoke(
        eval_cmd, ["--data", str(tmp_path / "syn"), "--models", "din,din+rq,din+psrq,mcca", "--seeds", "2", "--quick",
                   "--json", "--threads", "1", "--out", str(tmp_path / "out")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.strip().splitlines()]
    models, summary = lines[:-1], lines[-1]
    assert [m["model"] for m in models] == ["din", "din+rq", "din+psrq", "mcca"]
    for m in models:
        assert m["seeds"] == 2 and len(m["per_seed"]) == 2
        for key in ("all_auc", "cold_auc", "logloss", "gauc"):
            assert key in m and f"{key}_std" in m
        assert 0 <= m["all_auc"] <= 1
    assert summary["summary"] is True and summary["best_cold_auc"] in summary["models"]
    assert (tmp_path / "out" / "plot.png").stat().st_size > 0
    assert "| mcca |" in (tmp_path / "out" / "table.md").read_text()


def test_lastfm_converter_on_a_tiny_copy(tmp_path):
    """The converter's fixed choices on a hand-made 3-user extract of the Last.fm file layout."""
    src = tmp_path / "lfm"
    src.mkdir()
    (src / "artists.dat").write_text("id\tname\turl\tpictureURL\n1\tA\tu\tp\n2\tB\tu\tp\n3\tC\tu\tp\n4\tD\tu\tp\n")
    (src / "tags.dat").write_bytes("tagID\ttagValue\n1\trock\n2\tjazz\n".encode("latin-1"))
    (src / "user_artists.dat").write_text("userID\tartistID\tweight\n10\t1\t5\n10\t2\t3\n11\t3\t9\n12\t1\t1\n12\t4\t1\n")
    (src / "user_taggedartists.dat").write_text(
        "userID\tartistID\ttagID\tday\tmonth\tyear\n"
        "10\t1\t1\t1\t3\t2008\n10\t2\t1\t1\t5\t2008\n10\t2\t2\t1\t4\t2008\n"  # user 10 tagged artist 2 first in April
        "11\t3\t2\t1\t6\t2009\n12\t4\t1\t1\t1\t1956\n12\t1\t1\t1\t2\t2010\n"  # 1956: a data error, ignored
    )
    runner = CliRunner()
    result = runner.invoke(data, ["convert", "lastfm", "--src", str(src), "--out", str(tmp_path / "out"), "--no-embed"],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    ds = load_dataset(tmp_path / "out")
    pos = ds.interactions[ds.interactions["label"] == 1].set_index(["user_id", "item_id"])["timestamp"]
    assert len(pos) == 5  # every listening pair on a tagged, named artist
    assert pos[("10", "lastfm:2")] == 1207008000000  # first own tag: 2008-04-01 UTC
    assert pos[("10", "lastfm:1")] == 1204329600000
    neg = ds.interactions[ds.interactions["label"] == 0]
    played = set(zip(ds.interactions.loc[ds.interactions.label == 1, "user_id"], ds.interactions.loc[ds.interactions.label == 1, "item_id"], strict=True))
    assert not any((u, i) in played for u, i in zip(neg["user_id"], neg["item_id"], strict=True))
    assert set(ds.items.columns) >= {"item_id", "name", "tags", "text"}
