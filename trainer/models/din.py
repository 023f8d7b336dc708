"""DIN (Zhou et al., 2018) over item IDs, optionally with one codebook's semantic IDs (Table 3).

item repr  r(i) = e^r(i)                     (IDs only)
           r(i) = e^r(i) ⊕ e^sid(i)          (+ SIDs: sum of the SID's per-layer embeddings)
interest   h = sum_{j in H} w(r(j), r(target)) r(j)
y          = sigmoid(MLP([h, r(target)]))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from trainer.models.config import ModelConfig
from trainer.models.layers import MLP, ActivationUnit, SidEmbedding, id_embedding


class DIN(nn.Module):
    def __init__(self, config: ModelConfig, n_id_rows: int, sid_sizes: Sequence[int] | None = None) -> None:
        super().__init__()
        self.config = config
        d = config.emb_dim
        self.id_emb = id_embedding(n_id_rows, d)
        self.sid_emb = SidEmbedding(sid_sizes, d) if sid_sizes is not None else None
        item_dim = d * (2 if self.sid_emb is not None else 1)
        self.attention = ActivationUnit(item_dim, item_dim, config.att_hidden, config.activation)
        self.mlp = MLP(2 * item_dim, config.mlp_hidden, config.activation)

    def item_repr(self, ids: torch.Tensor, codes: dict[str, torch.Tensor], prefix: str) -> torch.Tensor:
        e = self.id_emb(ids)
        if self.sid_emb is None:
            return e
        return torch.cat([e, self.sid_emb(codes[f"{prefix}{self.config.sid_codebook}"])], dim=-1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits [B] (apply sigmoid for probabilities)."""
        target = self.item_repr(batch["item"], batch, "codes:")
        hist = self.item_repr(batch["hist_item"], batch, "hist_codes:")
        interest = self.attention(hist, target, batch["hist_mask"])
        return self.mlp(torch.cat([interest, target], dim=-1)).squeeze(-1)


class DINSum(nn.Module):
    """DIN over IDs ⊕ the sum of several codebooks' SID embeddings, no cross attention: the
    baseline MCCA is compared with (docs/results/lastfm-audio.md).

    r(i) = e^r(i) ⊕ sum_m e^m(i)    m over every codebook given (text, audio, joint)
    h    = sum_{j in H} w(r(j), r(target)) r(j);  y = sigmoid(MLP([h, r(target)]))
    """

    def __init__(self, config: ModelConfig, n_id_rows: int, codebook_sizes: Mapping[str, Sequence[int]]) -> None:
        super().__init__()
        if not codebook_sizes:
            raise ValueError("DIN + summed SIDs needs at least one codebook")
        self.config = config
        d = config.emb_dim
        self.codebooks = sorted(codebook_sizes)
        self.id_emb = id_embedding(n_id_rows, d)
        self.sid_emb = nn.ModuleDict({m: SidEmbedding(codebook_sizes[m], d) for m in self.codebooks})
        self.attention = ActivationUnit(2 * d, 2 * d, config.att_hidden, config.activation)
        self.mlp = MLP(4 * d, config.mlp_hidden, config.activation)

    def item_repr(self, ids: torch.Tensor, batch: dict[str, torch.Tensor], prefix: str) -> torch.Tensor:
        sid = torch.stack([self.sid_emb[m](batch[f"{prefix}{m}"]) for m in self.codebooks]).sum(0)
        return torch.cat([self.id_emb(ids), sid], dim=-1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits [B] (apply sigmoid for probabilities)."""
        target = self.item_repr(batch["item"], batch, "codes:")
        hist = self.item_repr(batch["hist_item"], batch, "hist_codes:")
        interest = self.attention(hist, target, batch["hist_mask"])
        return self.mlp(torch.cat([interest, target], dim=-1)).squeeze(-1)
