import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from trainer.metrics import auc, cold_mask, gauc, logloss, ranking_metrics

pytestmark = pytest.mark.unit


def test_auc_hand_computed():
    # pairs (pos, neg): (0.8,0.1) win, (0.8,0.4) win, (0.35,0.1) win, (0.35,0.4) loss -> 3/4
    assert auc([1, 0, 1, 0], [0.8, 0.1, 0.35, 0.4]) == pytest.approx(0.75)
    # a tie counts one half: pos 0.5 vs neg 0.5 -> 0.5, pos 0.5 vs neg 0.2 -> 1 => 0.75
    assert auc([1, 0, 0], [0.5, 0.5, 0.2]) == pytest.approx(0.75)
    assert auc([1, 1, 0], [0.9, 0.8, 0.1]) == 1.0
    assert math.isnan(auc([1, 1], [0.3, 0.2]))


def test_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    s = rng.integers(0, 20, 500) / 20.0  # many ties
    assert auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_logloss_hand_computed():
    expected = -(math.log(0.8) + math.log(1 - 0.4)) / 2
    assert logloss([1, 0], [0.8, 0.4]) == pytest.approx(expected)
    assert np.isfinite(logloss([1, 0], [0.0, 1.0]))  # clipped, not inf


def test_gauc_hand_computed_weights_and_skips():
    users = ["a", "a", "a", "b", "b", "c", "c"]
    labels = [1, 0, 0, 1, 0, 1, 1]  # c has one class only: skipped
    scores = [0.9, 0.95, 0.1, 0.2, 0.7, 0.5, 0.6]
    # a: pos 0.9 vs negs 0.95 (loss), 0.1 (win) -> 0.5, 3 impressions; b: 0.2 vs 0.7 -> 0, 2 impressions
    assert gauc(users, labels, scores) == pytest.approx((0.5 * 3 + 0.0 * 2) / 5)
    assert math.isnan(gauc(["x", "x"], [1, 1], [0.1, 0.2]))


def test_cold_mask_counts_training_rows():
    train = ["i1"] * 30 + ["i2"] * 29 + ["i3"]
    test = ["i1", "i2", "i3", "i4"]
    assert cold_mask(test, train).tolist() == [False, True, True, True]
    assert cold_mask(test, train, threshold=2).tolist() == [False, False, True, True]


def test_ranking_metrics_cold_auc_uses_only_cold_rows():
    train = ["hot"] * 40
    items = ["hot", "hot", "c1", "c2"]
    labels = [1, 0, 1, 0]
    probs = [0.1, 0.9, 0.8, 0.2]  # hot pair inverted, cold pair right
    m = ranking_metrics(["u"] * 4, items, labels, probs, train)
    assert m["cold_auc"] == 1.0 and m["n_cold"] == 2
    assert m["all_auc"] == pytest.approx(auc(labels, probs))
