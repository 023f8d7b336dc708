"""Rankers: DIN (item IDs, optionally + one codebook's semantic IDs, or the sum of several: DINSum) and MCCA (method.md §3), and
`build_model`, the factory that builds one from its config (here, so that the config module
imports neither model)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import nn

from trainer.models.config import ModelConfig
from trainer.models.din import DIN, DINSum
from trainer.models.mcca import MCCA

__all__ = ["DIN", "DINSum", "MCCA", "ModelConfig", "build_model"]


def build_model(config: ModelConfig, n_id_rows: int, codebook_sizes: Mapping[str, Sequence[int]]) -> nn.Module:
    """A DIN or MCCA for an ID table of `n_id_rows` rows and the data set's codebooks (by name)."""
    if config.kind == "din":
        sizes = None
        if config.sid_codebook is not None:
            if config.sid_codebook not in codebook_sizes:
                raise ValueError(f"DIN + SID needs the {config.sid_codebook!r} codebook; have {sorted(codebook_sizes)}")
            sizes = codebook_sizes[config.sid_codebook]
        return DIN(config, n_id_rows, sizes)
    if config.kind == "din-sum":
        return DINSum(config, n_id_rows, codebook_sizes)
    if config.kind == "mcca":
        return MCCA(config, n_id_rows, codebook_sizes)
    raise ValueError(f"unknown model kind {config.kind!r}; expected 'din', 'din-sum' or 'mcca'")
