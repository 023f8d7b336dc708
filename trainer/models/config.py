"""The ranker's dataclass config (the factory that builds a model from it: trainer.models.build_model)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class ModelConfig:
    """What to build. `kind`: "din" (IDs, plus `sid_codebook`'s semantic IDs if set),
    "din-sum" (IDs ⊕ the sum of every codebook's SID embedding) or "mcca".

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

