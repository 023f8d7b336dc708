"""The ranker's dataclass config and the factory that builds a model from it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn


@dataclass(frozen=True)
class ModelConfig:
    """What to build. `kind`: "din" (IDs, plus `sid_codebook`'s semantic IDs if set) or "mcca".

    MCCA ablations: `use_specific=False` drops the modality-specific codebooks (MSC),
    `use_joint=False` drops the modal-joint codebook (MJC) and its shared query.
    """

    kind: str = "mcca"
    emb_dim: int = 64
    att_hidden: tuple[int, ...] = (36,)  # [choice] the paper gives no activation-unit sizes
    mlp_hidden: tuple[int, ...] = (200, 80)  # [choice] method.md §3
    activation: str = "dice"  # "dice" | "prelu"
    sid_codebook: str | None = None  # DIN + SID: which codebook (e.g. "text")
    use_specific: bool = True
    use_joint: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelConfig:
        d = dict(d)
        for key in ("att_hidden", "mlp_hidden"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)


def build_model(config: ModelConfig, n_id_rows: int, codebook_sizes: Mapping[str, Sequence[int]]) -> nn.Module:
    """A DIN or MCCA for an ID table of `n_id_rows` rows and the data set's codebooks (by name)."""
    from trainer.models.din import DIN
    from trainer.models.mcca import MCCA

    if config.kind == "din":
        sizes = None
        if config.sid_codebook is not None:
            if config.sid_codebook not in codebook_sizes:
                raise ValueError(f"DIN + SID needs the {config.sid_codebook!r} codebook; have {sorted(codebook_sizes)}")
            sizes = codebook_sizes[config.sid_codebook]
        return DIN(config, n_id_rows, sizes)
    if config.kind == "mcca":
        return MCCA(config, n_id_rows, codebook_sizes)
    raise ValueError(f"unknown model kind {config.kind!r}; expected 'din' or 'mcca'")
