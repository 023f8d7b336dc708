"""MCCA: Multi-Codebook Cross-Attention (method.md §3), read top to bottom like the paper's figure.

e^m(i) = sum_l E_{m,l}[c_l^m(i)]                         per codebook m (text t, audio a, joint o)
e^r(i) = ID embedding (hashed rows for unseen ids)
query  = e^o(target)                                     the joint embedding is the shared query
h_m    = sum_{j in H} w_m(e^m(j), query) e^m(j)          for every codebook m
h_r    = sum_{j in H} w_r(e^r(j), e^r(target)) e^r(j)    DIN over plain IDs
y      = sigmoid(MLP([h_t, h_a, h_o, h_r, e^r(target), e^o(target)]))

Whichever modalities the data set has are used. With a single modality the joint embedding
l2(x) ⊕ nothing is that modality itself, so the joint codebook would duplicate it: the one
codebook then plays both roles (its h_m once, its target embedding as the query) [choice,
docs/evaluation.md]. The same rule holds per track: a track without a joint code (one of its
modalities missing, so no joint embedding) is queried by its own text code, else its audio code,
when those codebooks are attended: it is a single-modality track [choice, docs/evaluation.md].
Without it every such track shares the joint table's one "missing" row as its query and its
target embedding, and the network cannot see which track it scores. Ablations: use_specific=False keeps only the joint codebook (no MSC);
use_joint=False lets each codebook attend with its own target embedding (no MJC).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from trainer.models.config import ModelConfig
from trainer.models.layers import MLP, ActivationUnit, SidEmbedding, id_embedding

SPECIFIC = ("text", "audio")
JOINT = "joint"


def mcca_roles(config: ModelConfig, available: Sequence[str]) -> tuple[list[str], str | None]:
    """(codebooks attended over, the codebook whose target embedding is the shared query or None)."""
    specific = [m for m in SPECIFIC if m in available]
    joint = JOINT if JOINT in available else (specific[0] if len(specific) == 1 else None)
    if not specific and joint is None:
        raise ValueError(f"MCCA needs at least one of text/audio/joint codebooks; have {sorted(available)}")
    attended = list(specific) if config.use_specific else []
    if config.use_joint and joint is not None and joint not in attended:
        attended.append(joint)
    if not attended:  # no-MSC with a single modality: the one codebook is the joint one
        attended = [joint or specific[0]]
    return attended, (joint if config.use_joint else None)


class MCCA(nn.Module):
    def __init__(self, config: ModelConfig, n_id_rows: int, codebook_sizes: Mapping[str, Sequence[int]]) -> None:
        super().__init__()
        self.config = config
        d = config.emb_dim
        self.attended, self.query_codebook = mcca_roles(config, list(codebook_sizes))
        self.id_emb = id_embedding(n_id_rows, d)
        self.sid_emb = nn.ModuleDict({m: SidEmbedding(codebook_sizes[m], d) for m in self.attended})
        self.sid_attention = nn.ModuleDict(
            {m: ActivationUnit(d, d, config.att_hidden, config.activation) for m in self.attended}
        )
        self.id_attention = ActivationUnit(d, d, config.att_hidden, config.activation)
        # target embeddings in the MLP input: the shared query's, or each codebook's own without MJC
        self.target_codebooks = [self.query_codebook] if self.query_codebook else list(self.attended)
        in_dim = d * (len(self.attended) + 2 + len(self.target_codebooks))
        self.mlp = MLP(in_dim, config.mlp_hidden, config.activation)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits [B] (apply sigmoid for probabilities)."""
        mask = batch["hist_mask"]
        target_e = {m: self.sid_emb[m](batch[f"codes:{m}"]) for m in self.attended}
        query = self._query(batch, target_e) if self.query_codebook else None
        interests = []
        for m in self.attended:
            keys = self.sid_emb[m](batch[f"hist_codes:{m}"])
            interests.append(self.sid_attention[m](keys, query if query is not None else target_e[m], mask))
        target_id = self.id_emb(batch["item"])
        interests.append(self.id_attention(self.id_emb(batch["hist_item"]), target_id, mask))
        targets = [query] if query is not None else [target_e[m] for m in self.target_codebooks]
        parts = [*interests, target_id, *targets]
        return self.mlp(torch.cat(parts, dim=-1)).squeeze(-1)

    def _query(self, batch: dict[str, torch.Tensor], target_e: dict[str, torch.Tensor]) -> torch.Tensor:
        """The shared query: the target's joint embedding; for a target without a joint code, its
        text embedding, else its audio one (per row; a codebook's code -1 = the track has none)."""
        assert self.query_codebook is not None
        query = target_e[self.query_codebook]
        if self.query_codebook != JOINT:
            return query
        missing = batch[f"codes:{JOINT}"][..., 0] < 0
        for m in reversed([m for m in SPECIFIC if m in self.attended]):  # text wins over audio
            use = missing & (batch[f"codes:{m}"][..., 0] >= 0)
            query = torch.where(use.unsqueeze(-1), target_e[m], query)
        return query
