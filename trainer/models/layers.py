"""Building blocks shared by DIN and MCCA: Dice, MLPs, the DIN activation unit, SID embeddings."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Dice(nn.Module):
    """DIN's data-adaptive activation: p(x) * x + (1 - p(x)) * alpha * x, p = sigmoid(BN(x))."""

    def __init__(self, dim: int, eps: float = 1e-8) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, eps=eps, affine=False)
        self.alpha = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        p = torch.sigmoid(self.bn(flat)).reshape(shape)
        return p * x + (1 - p) * self.alpha * x


class PReLU(nn.Module):
    """PReLU with one slope per feature of the last dimension (any leading shape)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.full((dim,), 0.25))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x >= 0, x, self.alpha * x)


def activation(name: str, dim: int) -> nn.Module:
    if name == "dice":
        return Dice(dim)
    if name == "prelu":
        return PReLU(dim)
    raise ValueError(f"unknown activation {name!r}; expected 'dice' or 'prelu'")


class MLP(nn.Module):
    """Linear -> activation per hidden size, then a linear output of width `out_dim`."""

    def __init__(self, in_dim: int, hidden: Sequence[int], act: str, out_dim: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        dim = in_dim
        for width in hidden:
            layers += [nn.Linear(dim, width), activation(act, width)]
            dim = width
        layers.append(nn.Linear(dim, out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ActivationUnit(nn.Module):
    """w(k, q) = MLP([k ⊕ q]) -> scalar; no softmax, no heads (method.md §3)."""

    def __init__(self, key_dim: int, query_dim: int, hidden: Sequence[int], act: str) -> None:
        super().__init__()
        self.mlp = MLP(key_dim + query_dim, hidden, act, out_dim=1)

    def forward(self, keys: torch.Tensor, query: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """keys [B, T, Dk], query [B, Dq], mask [B, T] -> sum_j w(k_j, q) k_j  [B, Dk]."""
        q = query.unsqueeze(1).expand(-1, keys.shape[1], -1)
        w = self.mlp(torch.cat([keys, q], dim=-1)).squeeze(-1) * mask.to(keys.dtype)
        return torch.einsum("bt,btd->bd", w, keys)


class SidEmbedding(nn.Module):
    """e(i) = sum_l E_l[c_l(i)]: one table per SID layer; code -1 (no SID) uses a learned extra row."""

    def __init__(self, codebook_sizes: Sequence[int], dim: int) -> None:
        super().__init__()
        self.sizes = [int(k) for k in codebook_sizes]
        self.tables = nn.ModuleList(nn.Embedding(k + 1, dim) for k in self.sizes)
        for t in self.tables:
            nn.init.normal_(t.weight, std=0.05)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [..., L] (int64, -1 = missing) -> [..., dim]."""
        out = None
        for layer, (table, k) in enumerate(zip(self.tables, self.sizes, strict=True)):
            c = codes[..., layer]
            e = table(torch.where(c < 0, torch.full_like(c, k), c))
            out = e if out is None else out + e
        assert out is not None
        return out


def id_embedding(n_rows: int, dim: int) -> nn.Embedding:
    """Item ID table; row 0 is history padding (masked out), the rest are vocab + hashed OOV rows."""
    table = nn.Embedding(n_rows, dim, padding_idx=0)
    nn.init.normal_(table.weight, std=0.05)
    with torch.no_grad():
        table.weight[0].zero_()
    return table
