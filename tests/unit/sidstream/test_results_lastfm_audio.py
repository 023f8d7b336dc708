"""The lastfm-audio table's generator end to end on a small synthetic two-modality data set
(no ../shared): K chosen on validation, paired test runs, analysis, rendering and verdicts."""

import numpy as np
import pytest

from sidstream.results import lastfm_audio as la
from trainer.synthetic import make_synthetic

pytestmark = pytest.mark.unit


@pytest.fixture
def synthetic(monkeypatch):
    def fake_dataset(lastfm, audio, encoder):
        ds = make_synthetic(n_users=50, n_items=100, events_per_user=12, modalities=("text", "audio"),
                            seed=1 if encoder == "whisper" else 0)
        ds.items["tags"] = [[f"g{g}"] for g in ds.items["group"]]
        return ds

    monkeypatch.setattr(la, "dataset", fake_dataset)
    monkeypatch.setattr(la, "_PREPARED", {})
    monkeypatch.setattr(la, "MODEL_BASE", dict(emb_dim=8, att_hidden=(8,), mlp_hidden=(16,)))
    monkeypatch.setattr(la, "EPOCHS", 1)


def test_table_from_validation_choice_to_verdicts(synthetic, tmp_path):
    plan = la.Plan(seeds=2, k_grid=(4, 8), val_seeds=1)
    results, chosen = {}, {}
    for enc in plan.encoders:
        results.update(la.execute(la.val_runs(plan, enc), tmp_path, tmp_path, 1, tmp_path, "k"))
        chosen[enc] = la.choose_k(results, plan, enc)
        assert chosen[enc][0] in plan.k_grid
        results.update(la.execute(la.test_runs(plan, enc, chosen[enc][0]), tmp_path, tmp_path, 1, tmp_path, "k"))
    # the validation runs never saw the test rows: their split is the training period re-split
    val = la.prepared("", "", "vggish", "val")
    test = la.prepared("", "", "vggish", "test")
    assert val.samples.timestamps.max() <= test.cutoff_ms < test.test.timestamps.min()
    notes = {e: la.analysis("", "", e, k) for e, (k, _) in chosen.items()}
    assert notes["vggish"]["cold_items_with_audio"] == notes["vggish"]["cold_items"]
    assert 0 < notes["vggish"]["text_variance_share"] < 1
    md, verdicts = la.render(results, plan, chosen, notes)
    for a, b, _ in la.CLAIMS:
        assert verdicts[f"{a}_vs_{b}_cold"] in ("better", "worse", "level")
        assert f"whisper.{a}_vs_{b}_all" in verdicts
    assert verdicts["complete"] == "yes"
    for m, label in la.MODELS:
        assert f"| {label} (`{m}`) |" in md
    # text-only models are one set of runs shared by both encoders
    assert la.run_for("vggish", "din+psrq", 0, 4) == la.run_for("whisper", "din+psrq", 0, 4)


def test_a_stopped_regeneration_renders_whole_seeds_only(synthetic, tmp_path):
    plan = la.Plan(seeds=3, k_grid=(4,), val_seeds=1, encoders=("vggish",))
    results = la.execute(la.val_runs(plan, "vggish"), tmp_path, tmp_path, 1, tmp_path, "k")
    chosen = {"vggish": la.choose_k(results, plan, "vggish")}
    runs = la.test_runs(plan, "vggish", 4)
    results.update(la.execute(runs[: 2 * len(la.MODELS) + 3], tmp_path, tmp_path, 1, tmp_path, "k"))
    assert la.complete_seeds(results, plan, "vggish", 4) == 2
    # a budget of 0 runs nothing: it renders what is kept
    kept = la.execute(runs, tmp_path, tmp_path, 1, tmp_path, "k", budget_s=0)
    assert set(kept) == set(runs[: 2 * len(la.MODELS) + 3])
    md, verdicts = la.render(results, plan, chosen, {})
    assert verdicts["complete"] == "no" and "vggish 2 of 3" in md
    assert np.isfinite(la._vec(results, "vggish", "mcca", 4, 2)).all()
