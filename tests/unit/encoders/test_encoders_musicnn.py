"""The musicnn port: checkpoint reader pieces, front-end, shipped weights, tags on real recordings."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.unit

AUDIO_DIR = Path("/usr/share/games/singularity/music")
needs_music = pytest.mark.skipif(
    not AUDIO_DIR.is_dir(), reason=f"{AUDIO_DIR} absent: apt-get install singularity-music"
)


@pytest.fixture(scope="module")
def msd():
    from encoders import load_audio_encoder

    return load_audio_encoder("musicnn", window_s=10.0, max_windows=2)


def test_crc32c_known_vector_and_mask():
    from encoders.musicnn.tf_checkpoint import crc32c, mask_crc

    assert crc32c(b"123456789") == 0xE3069283
    assert mask_crc(0) == 0xA282EAD8


def _sstable(entries: list[tuple[bytes, bytes]]) -> bytes:
    """A one-data-block SSTable as LevelDB/TensorFlow writes it (prefix-compressed keys)."""

    def varint(n: int) -> bytes:
        out = b""
        while True:
            byte, n = n & 0x7F, n >> 7
            out += bytes([byte | (0x80 if n else 0)])
            if not n:
                return out

    def block(items: list[tuple[bytes, bytes]]) -> bytes:
        body, previous = b"", b""
        for key, value in items:
            shared = len(__import__("os").path.commonprefix([previous, key]))
            body += varint(shared) + varint(len(key) - shared) + varint(len(value)) + key[shared:] + value
            previous = key
        return body + struct.pack("<II", 0, 1)

    data = block(entries)
    index = block([(entries[-1][0], varint(0) + varint(len(data)))])
    table = data + b"\0\0\0\0\0"
    index_offset = len(table)
    table += index + b"\0\0\0\0\0"
    handles = varint(0) + varint(0) + varint(index_offset) + varint(len(index))
    return table + handles.ljust(40, b"\0") + struct.pack("<Q", 0xDB4775248B80FB57)


def test_checkpoint_reader_on_a_hand_written_bundle(tmp_path):
    from encoders.musicnn.tf_checkpoint import CheckpointReader, crc32c, mask_crc

    weights = np.arange(6, dtype=np.float32).reshape(2, 3)
    bias = np.array([1.5, -2.0], dtype=np.float32)
    data = weights.tobytes() + bias.tobytes()

    def entry(shape, offset, raw):
        dims = b"".join(b"\x12" + bytes([2]) + b"\x08" + bytes([d]) for d in shape)
        return (b"\x08\x01" + b"\x12" + bytes([len(dims)]) + dims + b"\x20" + bytes([offset])
                + b"\x28" + bytes([len(raw)]) + b"\x35" + struct.pack("<I", mask_crc(crc32c(raw))))

    header = b"\x08\x01"  # num_shards = 1, little endian
    table = _sstable([(b"", header), (b"layer/bias", entry((2,), 24, bias.tobytes())),
                      (b"layer/kernel", entry((2, 3), 0, weights.tobytes()))])
    (tmp_path / "ckpt.index").write_bytes(table)
    (tmp_path / "ckpt.data-00000-of-00001").write_bytes(data)
    reader = CheckpointReader(tmp_path / "ckpt")
    assert reader.names() == ["layer/bias", "layer/kernel"]
    np.testing.assert_array_equal(reader.tensor("layer/kernel", verify_crc=True), weights)
    np.testing.assert_array_equal(reader.tensor("layer/bias", verify_crc=True), bias)
    (tmp_path / "ckpt.data-00000-of-00001").write_bytes(data[:-1] + b"\x00")
    with pytest.raises(ValueError, match="crc32c mismatch"):
        CheckpointReader(tmp_path / "ckpt").tensor("layer/bias", verify_crc=True)


@pytest.mark.parametrize("pad_mode", ["constant", "reflect"])
def test_mel_front_end_matches_librosa(pad_mode):
    import librosa

    from encoders.melspec import MelSpectrogram

    wave = np.random.default_rng(1).standard_normal(16000 * 2).astype(np.float32) * 0.1
    stft = librosa.stft(wave, n_fft=512, hop_length=256, pad_mode=pad_mode)
    reference = (librosa.filters.mel(sr=16000, n_fft=512, n_mels=96) @ np.abs(stft) ** 2).T
    ours = MelSpectrogram(16000, 512, 256, 96, pad_mode=pad_mode)(torch.from_numpy(wave)[None])[0].numpy()
    np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-6 * reference.max())


def test_shipped_weights_cover_the_network():
    from safetensors import safe_open

    from encoders.musicnn.model import Musicnn
    from encoders.musicnn.weights import MSD_LABELS, SHIPPED_DIR

    path = SHIPPED_DIR / "MSD_musicnn.safetensors"
    assert path.is_file() and path.stat().st_size < 2_000_000
    assert (SHIPPED_DIR / "LICENSE-musicnn.md").read_text().count("ISC") >= 1
    with safe_open(str(path), "pt") as handle:
        keys = set(handle.keys())
        assert handle.metadata()["labels"].count('"') == 2 * len(MSD_LABELS)
    assert keys == set(Musicnn().state_dict()) - {k for k in Musicnn().state_dict() if k.endswith("num_batches_tracked")}


def test_tf_name_mapping_shapes():
    from encoders.musicnn.model import Musicnn, state_dict_from_tf

    model = Musicnn()
    fake: dict[str, torch.Tensor] = {}
    shapes = {"conv2d": (7, 38, 1, 204), "conv2d_1": (7, 67, 1, 204), "conv2d_2": (128, 1, 1, 51),
              "conv2d_3": (64, 1, 1, 51), "conv2d_4": (32, 1, 1, 51), "conv2d_5": (7, 561, 1, 64),
              "conv2d_6": (7, 64, 1, 64), "conv2d_7": (7, 64, 1, 64), "dense": (1506, 200), "dense_1": (200, 50)}
    for name, shape in shapes.items():
        fake[f"{name}/kernel"] = torch.randn(shape)
        fake[f"{name}/bias"] = torch.randn(shape[-1])
    for i, width in enumerate([1, 204, 204, 51, 51, 51, 64, 64, 64, 1506, 200]):
        scope = "batch_normalization" + (f"_{i}" if i else "")
        for var in ("gamma", "beta", "moving_mean", "moving_variance"):
            fake[f"{scope}/{var}"] = torch.rand(width)
    model.load_state_dict(state_dict_from_tf(fake), strict=False)
    # TF [h, w, in, out] -> torch [out, in, h, w]
    assert torch.equal(model.timbral[0].conv.weight[5, 0], fake["conv2d/kernel"][:, :, 0, 5])


def test_musicnn_encoder_outputs(msd):
    from encoders.musicnn import MSD_LABELS

    assert msd.dim == 200 and msd.sample_rate == 16000 and msd.model_id.startswith("musicnn:MSD_musicnn:penultimate@")
    rng = np.random.default_rng(0)
    waves = [rng.standard_normal(16000 * 25).astype(np.float32) * 0.1,
             np.sin(np.arange(16000 * 4) * 2 * np.pi * 220 / 16000).astype(np.float32),
             rng.standard_normal(2000).astype(np.float32) * 0.1]  # shorter than a 3 s patch: repeat-padded
    emb = msd.encode(waves)
    assert emb.shape == (3, 200) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(emb, msd.encode(waves))
    tags = msd.predict_tags(waves)
    assert tags.shape == (3, len(MSD_LABELS)) and tags.min() >= 0 and tags.max() <= 1
    assert msd.with_output("max_pool").encode(waves[:1]).shape == (1, 753)


@needs_music
def test_real_recordings_get_plausible_tags(msd):
    """The game's soundtrack is synthesiser-based electronic/ambient music: a broken port (wrong
    layout, BN eps, interleaving) scatters the probabilities over rock, pop or hip-hop instead."""
    from encoders import decode_audio

    files = [AUDIO_DIR / name for name in ("Coherence.ogg", "Enemy Unknown.ogg", "Through Space.ogg")]
    files = [f for f in files if f.is_file()] or sorted(AUDIO_DIR.glob("*.ogg"))[:3]
    waves = [decode_audio(f, 16000) for f in files]
    for file, top in zip(files, msd.top_tags(waves, k=3), strict=True):
        names = [name for name, _ in top]
        assert names[0] in {"electronic", "ambient"}, (file.name, top)
        assert {"electronic", "ambient"} <= set(names) | {"electronica", "chillout"}, (file.name, top)
        assert top[0][1] > 0.2, (file.name, top)
    emb = msd.encode(waves)
    assert float(emb[0] @ emb[1]) < 0.999
