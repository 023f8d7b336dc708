"""musicnn (Pons & Serra, 2019) in PyTorch, read top to bottom like musicnn/models.py.

Layout: the TF model is NHWC over [batch, time, mel, channel]; here the front-end runs NCHW over
[batch, 1, time, mel] and the mid-end as 1-D convolutions over time. Every batch norm is the
TF v1 `batch_normalization` default: eps = 1e-3, inference statistics.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

BN_EPS = 1e-3  # tf.compat.v1.layers.batch_normalization default epsilon
N_MELS = 96
N_FRAMES = 187  # librosa.time_to_frames(3 s, sr=16000, n_fft=512, hop=256) + 1


def _same_pad(kernel: int) -> tuple[int, int]:
    """TF 'same' padding: the extra sample of an even kernel goes after, not before."""
    total = kernel - 1
    return total // 2, total - total // 2


class TimbralBlock(nn.Module):
    """Conv over (7 frames x a share of the mel axis), ReLU, BN, max over the remaining mel axis."""

    def __init__(self, filters: int, freq_kernel: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, filters, kernel_size=(7, freq_kernel))
        self.bn = nn.BatchNorm2d(filters, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [b, 1, t, mel]
        x = F.pad(x, (0, 0, 3, 3))  # time only: a 'same' conv in time, 'valid' in frequency
        x = self.bn(F.relu(self.conv(x)))
        return x.amax(dim=3)  # [b, filters, t]


class TemporalBlock(nn.Module):
    """Conv over (k frames x 1 mel band), TF 'same' padding, ReLU, BN, max over the mel axis."""

    def __init__(self, filters: int, time_kernel: int) -> None:
        super().__init__()
        self.pad = _same_pad(time_kernel)
        self.conv = nn.Conv2d(1, filters, kernel_size=(time_kernel, 1))
        self.bn = nn.BatchNorm2d(filters, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (0, 0, *self.pad))
        x = self.bn(F.relu(self.conv(x)))
        return x.amax(dim=3)


class MidendLayer(nn.Module):
    """A conv spanning all features of 7 frames ('same' in time), ReLU, BN."""

    def __init__(self, in_features: int, filters: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_features, filters, kernel_size=7, padding=3)
        self.bn = nn.BatchNorm1d(filters, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [b, features, t]
        return self.bn(F.relu(self.conv(x)))


class Musicnn(nn.Module):
    """Front-end (2 timbral + 3 temporal blocks), dense mid-end with residuals, global-pool back-end.

    forward(log-mel patches [b, 187, 96]) -> dict with 'logits' [b, classes], 'tags' (sigmoid),
    'penultimate' [b, units], 'max_pool' and 'mean_pool' [b, 561 + 3 * midend_filters].
    """

    def __init__(self, num_classes: int = 50, midend_filters: int = 64, backend_units: int = 200,
                 frontend_scale: float = 1.6) -> None:
        super().__init__()
        self.input_bn = nn.BatchNorm2d(1, eps=BN_EPS)
        timbral = int(frontend_scale * 128)
        temporal = int(frontend_scale * 32)
        self.timbral = nn.ModuleList([TimbralBlock(timbral, int(0.4 * N_MELS)), TimbralBlock(timbral, int(0.7 * N_MELS))])
        self.temporal = nn.ModuleList([TemporalBlock(temporal, k) for k in (128, 64, 32)])
        frontend_features = 2 * timbral + 3 * temporal  # 561
        self.midend = nn.ModuleList([
            MidendLayer(frontend_features, midend_filters),
            MidendLayer(midend_filters, midend_filters),
            MidendLayer(midend_filters, midend_filters),
        ])
        self.pooled_features = frontend_features + 3 * midend_filters  # 753
        self.pool_bn = nn.BatchNorm1d(2 * self.pooled_features, eps=BN_EPS)
        self.dense = nn.Linear(2 * self.pooled_features, backend_units)
        self.dense_bn = nn.BatchNorm1d(backend_units, eps=BN_EPS)
        self.output = nn.Linear(backend_units, num_classes)

    def forward(self, patches: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.input_bn(patches.unsqueeze(1))  # [b, 1, t, mel]
        frontend = torch.cat([block(x) for block in (*self.timbral, *self.temporal)], dim=1)  # [b, 561, t]

        conv1 = self.midend[0](frontend)
        res2 = self.midend[1](conv1) + conv1
        res3 = self.midend[2](res2) + res2
        features = torch.cat([frontend, conv1, res2, res3], dim=1)  # [b, 753, t]

        max_pool = features.amax(dim=2)
        mean_pool = features.mean(dim=2)
        # TF concatenates [max, mean] on a trailing axis and flattens: the two interleave per feature.
        pooled = torch.stack([max_pool, mean_pool], dim=2).flatten(1)  # [b, 1506]
        penultimate = self.dense_bn(F.relu(self.dense(self.pool_bn(pooled))))  # dropout is off at inference
        logits = self.output(penultimate)
        return {"logits": logits, "tags": torch.sigmoid(logits), "penultimate": penultimate,
                "max_pool": max_pool, "mean_pool": mean_pool}


def _bn(prefix: str, tf: dict) -> dict:
    return {f"{prefix}.weight": tf["gamma"], f"{prefix}.bias": tf["beta"],
            f"{prefix}.running_mean": tf["moving_mean"], f"{prefix}.running_var": tf["moving_variance"]}


def state_dict_from_tf(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map TF variable names (creation order: conv2d, conv2d_1, ...; batch_normalization, _1, ...)
    to this module's state dict. TF conv kernels are [h, w, in, out]; dense kernels [in, out]."""

    def group(name: str, index: int) -> dict[str, torch.Tensor]:
        scope = name if index == 0 else f"{name}_{index}"
        return {key.split("/", 1)[1]: value for key, value in tensors.items() if key.split("/", 1)[0] == scope}

    state: dict[str, torch.Tensor] = {}
    state.update(_bn("input_bn", group("batch_normalization", 0)))
    modules = [f"timbral.{i}" for i in range(2)] + [f"temporal.{i}" for i in range(3)]
    for i, module in enumerate(modules):
        conv = group("conv2d", i)
        state[f"{module}.conv.weight"] = conv["kernel"].permute(3, 2, 0, 1).contiguous()
        state[f"{module}.conv.bias"] = conv["bias"]
        state.update(_bn(f"{module}.bn", group("batch_normalization", i + 1)))
    for i in range(3):
        conv = group("conv2d", 5 + i)
        # [7, features, 1, filters] -> Conv1d [filters, features, 7]
        state[f"midend.{i}.conv.weight"] = conv["kernel"][:, :, 0, :].permute(2, 1, 0).contiguous()
        state[f"midend.{i}.conv.bias"] = conv["bias"]
        state.update(_bn(f"midend.{i}.bn", group("batch_normalization", 6 + i)))
    state.update(_bn("pool_bn", group("batch_normalization", 9)))
    state.update(_bn("dense_bn", group("batch_normalization", 10)))
    for module, index in (("dense", 0), ("output", 1)):
        dense = group("dense", index)
        state[f"{module}.weight"] = dense["kernel"].t().contiguous()
        state[f"{module}.bias"] = dense["bias"]
    return state
