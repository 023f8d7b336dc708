"""Rankers: DIN (item IDs, optionally + one codebook's semantic IDs) and MCCA (method.md §3)."""

from trainer.models.config import ModelConfig, build_model
from trainer.models.din import DIN
from trainer.models.mcca import MCCA

__all__ = ["DIN", "MCCA", "ModelConfig", "build_model"]
