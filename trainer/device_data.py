"""Device-resident training data: `Samples` and `Lookup` moved to the device once, batches
gathered there by index.

The host path (`trainer.features.batches`) builds every batch in numpy and copies it to the
device: on a GPU that is a numpy gather, a numpy→torch conversion and a host→device copy per
step, which leaves the GPU waiting. Here the per-row arrays (items, histories, labels) and the
per-item tables (ID rows, SIDs per codebook) are tensors on the device; a step slices the
epoch's permutation and gathers with `torch.index_select`, so the hot path never touches numpy.

Equivalence with the host path is exact: the permutation is the same numpy one (one
host→device copy per epoch), DDP ranks take the same rows, and every batch tensor has the same
values and dtype as `Lookup.batch` gives (tests/unit/trainer/test_trainer_device_data.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from trainer.features import Lookup, Samples


class DeviceData:
    """One `Samples` + `Lookup` on `device`; `batch(rows)` and `batches(...)` mirror trainer.features."""

    def __init__(self, samples: Samples, lookup: Lookup, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.n = len(samples)

        def put(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a)).to(self.device)

        self.items = put(samples.items)
        self.history = put(samples.history)
        self.labels = put(samples.labels)
        self.id_rows = put(lookup.id_rows)
        self.codes = {name: put(codes) for name, codes in lookup.codes.items()}
        # the host path's np.where fill values, in the dtypes numpy gives its results
        self._id_fill = self._fill(lookup.id_rows, 0)
        self._code_fill = {name: self._fill(codes, -1) for name, codes in lookup.codes.items()}

    def _fill(self, table: np.ndarray, value: int) -> torch.Tensor:
        dtype = torch.from_numpy(np.where(True, table[:0], value)).dtype
        return torch.full((), value, dtype=dtype, device=self.device)

    def __len__(self) -> int:
        return self.n

    def batch(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """rows: int64 tensor on the device -> the same dict as `Lookup.batch` (on the device)."""
        items = self.items.index_select(0, rows)
        hist = self.history.index_select(0, rows)
        mask = hist >= 0
        hist_c = hist.clamp(min=0)  # == np.where(mask, hist, 0): padding is -1
        flat = hist_c.reshape(-1)
        out = {
            "item": self.id_rows.index_select(0, items),
            "hist_item": torch.where(mask, self.id_rows.index_select(0, flat).reshape(hist.shape),
                                     self._id_fill).to(self._id_fill.dtype),
            "hist_mask": mask,
            "label": self.labels.index_select(0, rows),
        }
        for name, codes in self.codes.items():
            out[f"codes:{name}"] = codes.index_select(0, items)
            hist_codes = codes.index_select(0, flat).reshape(*hist.shape, codes.shape[-1])
            out[f"hist_codes:{name}"] = torch.where(mask.unsqueeze(-1), hist_codes,
                                                    self._code_fill[name]).to(self._code_fill[name].dtype)
        return out

    def order(self, shuffle_seed: int | None) -> torch.Tensor:
        """The epoch's row order on the device: the host path's numpy permutation, copied once."""
        order = np.arange(self.n) if shuffle_seed is None else np.random.default_rng(shuffle_seed).permutation(self.n)
        return torch.from_numpy(order.astype(np.int64, copy=False)).to(self.device)

    def batches(
        self, batch_size: int, shuffle_seed: int | None = None, start: int = 0, rank: int = 0, world_size: int = 1,
    ) -> Iterator[dict[str, torch.Tensor]]:
        """`trainer.features.batches` on the device: same rows per batch, per rank, from `start`."""
        order = self.order(shuffle_seed)
        step = batch_size * world_size
        for b in range(start, (self.n + step - 1) // step):
            rows = order[b * step : (b + 1) * step][rank::world_size]
            if rows.numel():
                yield self.batch(rows)


def use_device_data(data_path: str, device: torch.device) -> bool:
    """TrainConfig.data_path: "auto" = device-resident off the CPU; "host" / "device" force one."""
    if data_path == "auto":
        return device.type != "cpu"
    if data_path in ("host", "device"):
        return data_path == "device"
    raise ValueError(f"data_path must be 'auto', 'host' or 'device'; got {data_path!r}")
