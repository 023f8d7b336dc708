"""Where musicnn's trained weights come from, and their conversion to safetensors.

The musicnn wheel on PyPI (ISC licence, Music Technology Group, UPF, 2019) ships TensorFlow v1
checkpoints. The project commits `weights/MSD_musicnn.safetensors` (float16, converted by
`convert_from_wheel`, licence in weights/LICENSE-musicnn.md). Any other variant is converted on
first use from the pinned wheel, fetched with `pip download --no-deps` into a cache directory and
checked against its sha256. Nothing here needs TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from encoders.musicnn.model import Musicnn, state_dict_from_tf
from encoders.musicnn.tf_checkpoint import CheckpointReader

log = logging.getLogger(__name__)

WHEEL_VERSION = "0.1.0"
WHEEL_NAME = f"musicnn-{WHEEL_VERSION}-py3-none-any.whl"
WHEEL_SHA256 = "f38a4890c648c1ddbb141c5d96d2b0a8cfcd36746002d896989f7b88beb65cfa"
SHIPPED_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "sidstream" / "musicnn"

# musicnn/configuration.py (ISC): the output order of each variant's 50 tags
MSD_LABELS = ["rock", "pop", "alternative", "indie", "electronic", "female vocalists", "dance", "00s",
              "alternative rock", "jazz", "beautiful", "metal", "chillout", "male vocalists", "classic rock",
              "soul", "indie rock", "Mellow", "electronica", "80s", "folk", "90s", "chill", "instrumental",
              "punk", "oldies", "blues", "hard rock", "ambient", "acoustic", "experimental",
              "female vocalist", "guitar", "Hip-Hop", "70s", "party", "country", "easy listening", "sexy",
              "catchy", "funk", "electro", "heavy metal", "Progressive rock", "60s", "rnb", "indie pop",
              "sad", "House", "happy"]
MTT_LABELS = ["guitar", "classical", "slow", "techno", "strings", "drums", "electronic", "rock", "fast",
              "piano", "ambient", "beat", "violin", "vocal", "synth", "female", "indian", "opera", "male",
              "singing", "vocals", "no vocals", "harpsichord", "loud", "quiet", "flute", "woman",
              "male vocal", "no vocal", "pop", "soft", "sitar", "solo", "man", "classic", "choir", "voice",
              "new age", "dance", "male voice", "female vocal", "beats", "harp", "cello", "no voice",
              "weird", "country", "metal", "female voice", "choral"]
VARIANTS = {"MSD_musicnn": MSD_LABELS, "MTT_musicnn": MTT_LABELS}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_wheel(cache_dir: Path = DEFAULT_CACHE_DIR) -> Path:
    """The pinned musicnn wheel in `cache_dir`, downloaded with pip (no dependencies) when absent."""
    wheel = cache_dir / WHEEL_NAME
    if not wheel.is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
            command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                       f"musicnn=={WHEEL_VERSION}", "-d", tmp]
            log.info("fetching the musicnn wheel: %s", " ".join(command))
            result = subprocess.run(command, capture_output=True, text=True, check=False)
            downloaded = Path(tmp) / WHEEL_NAME
            if result.returncode != 0 or not downloaded.is_file():
                raise RuntimeError(f"pip download musicnn=={WHEEL_VERSION} failed: {result.stderr.strip()[-500:]}")
            shutil.move(str(downloaded), wheel)
    actual = sha256_of(wheel)
    if actual != WHEEL_SHA256:
        wheel.unlink()
        raise RuntimeError(f"{WHEEL_NAME}: sha256 {actual} != pinned {WHEEL_SHA256}; removed it")
    return wheel


def read_tf_checkpoint(prefix: str | Path) -> dict[str, torch.Tensor]:
    """Model variables of a musicnn checkpoint (optimizer slots and counters left out)."""
    reader = CheckpointReader(prefix)
    skip = ("/Adam", "beta1_power", "beta2_power", "global_step")
    return {name: torch.from_numpy(reader.tensor(name, verify_crc=True))
            for name in reader.names() if not any(s in name for s in skip)}


def convert_from_wheel(wheel: Path, variant: str, out_path: Path, dtype: torch.dtype = torch.float16) -> Path:
    """Convert one checkpoint of the wheel into a safetensors state dict of `Musicnn`."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown musicnn variant {variant!r}; known: {sorted(VARIANTS)}")
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(wheel) as archive:
        for suffix in (".index", ".data-00000-of-00001"):
            archive.extract(f"musicnn/{variant}/{suffix}", tmp)
        # the checkpoint prefix is the directory itself: files are named ".index", ".data-..."
        tensors = read_tf_checkpoint(f"{Path(tmp) / 'musicnn' / variant}/")
    state = state_dict_from_tf(tensors)
    Musicnn(num_classes=len(VARIANTS[variant])).load_state_dict(state)  # the mapping covers every weight
    state = {k: v.to(dtype).contiguous() for k, v in state.items()}
    metadata = {
        "variant": variant, "labels": json.dumps(VARIANTS[variant]),
        "source": f"pypi musicnn=={WHEEL_VERSION} ({WHEEL_NAME}, sha256 {WHEEL_SHA256}) musicnn/{variant}/",
        "license": "ISC, Copyright (c) Music Technology Group, Universitat Pompeu Fabra 2019",
        "converted_by": "encoders.musicnn.weights.convert_from_wheel",
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out_path), metadata=metadata)
    return out_path


def weights_path(variant: str, cache_dir: Path = DEFAULT_CACHE_DIR) -> Path:
    """The safetensors file of a variant: shipped with the code, else cached, else converted now."""
    for candidate in (SHIPPED_DIR / f"{variant}.safetensors", cache_dir / f"{variant}.safetensors"):
        if candidate.is_file():
            return candidate
    return convert_from_wheel(fetch_wheel(cache_dir), variant, cache_dir / f"{variant}.safetensors")


def load_musicnn(variant: str = "MSD_musicnn", cache_dir: Path = DEFAULT_CACHE_DIR) -> tuple[Musicnn, list[str], str]:
    """The ported network in eval mode (float32), its tag labels, and the weight file's sha256."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown musicnn variant {variant!r}; known: {sorted(VARIANTS)}")
    path = weights_path(variant, cache_dir)
    model = Musicnn(num_classes=len(VARIANTS[variant]))
    model.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
    return model.eval(), list(VARIANTS[variant]), sha256_of(path)
