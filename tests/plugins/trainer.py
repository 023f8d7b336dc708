"""Data for the trainer tests."""

import pytest


@pytest.fixture(scope="module")
def prep():
    """A small prepared synthetic data set (60 users, 150 items) for trainer tests."""
    from trainer.evaluate import prepare
    from trainer.synthetic import make_synthetic

    return prepare(make_synthetic(n_users=60, n_items=150, events_per_user=12, seed=1), test_fraction=0.2)
