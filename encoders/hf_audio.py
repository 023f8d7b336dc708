"""Any Hugging Face audio model directory (MERT, wav2vec2, HuBERT, ...) as an audio encoder.

Hidden states of a chosen layer ("last", an index into `hidden_states` where 0 is the
feature projection, or "mean" over all transformer layers as MERT's authors suggest) are pooled
over time ("mean", "max" or "meanmax" = both concatenated) per window; windows are averaged per track.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from encoders.audio import AudioEncoder
from encoders.pipeline import pinned
from encoders.text import directory_fingerprint

log = logging.getLogger(__name__)

TIME_POOLINGS = ("mean", "max", "meanmax")
MIN_SAMPLES = 4000  # wav2vec2-style conv stacks need a few hundred samples at least; repeat-pad shorter windows


class HFAudioEncoder(AudioEncoder):
    def __init__(self, model: torch.nn.Module, feature_extractor: object, model_id: str, *,
                 device: torch.device, dtype: torch.dtype, layer: int | str = "last", time_pooling: str = "mean",
                 window_s: float = 10.0, max_windows: int | None = 6, window_batch: int = 8,
                 pipeline: str = "auto") -> None:
        if time_pooling not in TIME_POOLINGS:
            raise ValueError(f"time_pooling must be one of {TIME_POOLINGS}, got {time_pooling!r}")
        if isinstance(layer, str) and layer not in ("last", "mean"):
            layer = int(layer)
        super().__init__(window_s=window_s, max_windows=max_windows, window_batch=window_batch, pipeline=pipeline)
        self.model = model.eval()
        self.feature_extractor = feature_extractor
        self.device, self.dtype = device, dtype
        self.layer, self.time_pooling = layer, time_pooling
        self.sample_rate = int(getattr(feature_extractor, "sampling_rate", 16000))
        hidden = int(model.config.hidden_size)
        self.dim = 2 * hidden if time_pooling == "meanmax" else hidden
        self.model_id = f"{model_id}:layer={layer}:pool={time_pooling}"

    @classmethod
    def from_dir(cls, path: Path, *, device: torch.device, dtype: torch.dtype, trust_remote_code: bool = False,
                 **kwargs: object) -> HFAudioEncoder:
        from transformers import AutoFeatureExtractor, AutoModel

        path = Path(path).expanduser().resolve()
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} is not a Hugging Face model directory (no config.json)")
        extractor = AutoFeatureExtractor.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)
        model = AutoModel.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code, dtype=dtype)
        return cls(model.to(device), extractor, f"{path.name}@{directory_fingerprint(path)}", device=device,
                   dtype=dtype, **kwargs)  # type: ignore[arg-type]

    def input_values(self, windows: torch.Tensor) -> torch.Tensor:
        """The feature extractor's output for equal-length windows (host, float32)."""
        if windows.shape[1] < MIN_SAMPLES:
            windows = windows.repeat(1, -(-MIN_SAMPLES // windows.shape[1]))
        features = self.feature_extractor(  # type: ignore[operator]
            list(windows.numpy().astype(np.float32)), sampling_rate=self.sample_rate, return_tensors="pt"
        )
        return features["input_values"]

    def hidden(self, windows: torch.Tensor) -> torch.Tensor:
        """The chosen layer's hidden states [b, frames, hidden] for equal-length windows."""
        return self.hidden_of_inputs(self.input_values(windows))

    def hidden_of_inputs(self, input_values: torch.Tensor) -> torch.Tensor:
        inputs = {"input_values": input_values.to(self.device, self.dtype, non_blocking=True)}
        want_all = self.layer != "last"
        output = self.model(**inputs, output_hidden_states=want_all)
        if self.layer == "last":
            return output.last_hidden_state
        states = output.hidden_states
        if self.layer == "mean":
            return torch.stack(states[1:], dim=0).mean(dim=0)
        return states[int(self.layer)]

    def prepare_windows(self, windows: torch.Tensor) -> object:
        return pinned(self.input_values(windows), self.device)  # the extractor runs in the background thread

    def embed_prepared(self, prepared: object) -> torch.Tensor:
        return self.pool_time(self.hidden_of_inputs(prepared))  # type: ignore[arg-type]

    def embed_windows(self, windows: torch.Tensor) -> torch.Tensor:
        return self.pool_time(self.hidden(windows))

    def pool_time(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = hidden.float()
        if self.time_pooling == "mean":
            return hidden.mean(dim=1)
        if self.time_pooling == "max":
            return hidden.amax(dim=1)
        return torch.cat([hidden.mean(dim=1), hidden.amax(dim=1)], dim=1)
