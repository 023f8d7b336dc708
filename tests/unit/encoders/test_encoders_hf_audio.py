"""A tiny random wav2vec2 model saved like a real checkpoint, loaded through load_audio_encoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from encoders import load_audio_encoder

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    directory = tmp_path_factory.mktemp("tiny_wav2vec2")
    torch.manual_seed(0)
    config = Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                            conv_dim=(16, 16, 16), conv_stride=(5, 4, 4), conv_kernel=(10, 4, 4),
                            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, do_stable_layer_norm=False)
    Wav2Vec2Model(config).save_pretrained(directory)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, do_normalize=True,
                             return_attention_mask=False).save_pretrained(directory)
    return directory


def _waves():
    rng = np.random.default_rng(0)
    return [rng.standard_normal(16000 * 3).astype(np.float32) * 0.1,
            np.sin(np.arange(16000) * 2 * np.pi * 440 / 16000).astype(np.float32),
            rng.standard_normal(1000).astype(np.float32)]  # shorter than the conv stack's minimum: repeat-padded


@pytest.mark.parametrize(("layer", "pooling", "dim"), [("last", "mean", 32), (1, "max", 32), ("mean", "meanmax", 64)])
def test_tiny_hf_audio_model(tiny_dir, layer, pooling, dim):
    encoder = load_audio_encoder(str(tiny_dir), window_s=1.0, max_windows=2, layer=layer, time_pooling=pooling)
    assert encoder.dim == dim and encoder.sample_rate == 16000
    assert encoder.model_id.startswith(tiny_dir.name + "@") and f"pool={pooling}" in encoder.model_id
    out = encoder.encode(_waves())
    assert out.shape == (3, dim) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(out, encoder.encode(_waves()))


def test_tiny_hf_audio_matches_manual_forward(tiny_dir):
    from transformers import Wav2Vec2Model

    encoder = load_audio_encoder(str(tiny_dir), window_s=0)  # no windowing: one pass over the waveform
    wave = _waves()[0]
    model = Wav2Vec2Model.from_pretrained(tiny_dir).eval()
    normalised = (wave - wave.mean()) / np.sqrt(wave.var() + 1e-7)
    with torch.no_grad():
        expected = model(torch.from_numpy(normalised)[None]).last_hidden_state[0].mean(0).numpy()
    np.testing.assert_allclose(encoder.encode([wave])[0], expected / np.linalg.norm(expected), atol=1e-4)


def test_bad_time_pooling(tiny_dir):
    with pytest.raises(ValueError, match="time_pooling"):
        load_audio_encoder(str(tiny_dir), time_pooling="median")


def test_tiny_hf_audio_pipelined_matches_plain(tiny_dir):
    """Pipeline forced on (the feature extractor runs in the background thread): same embeddings."""
    waves = [*_waves(), _waves()[0][: 16000 * 2]]
    plain = load_audio_encoder(str(tiny_dir), window_s=1.0, max_windows=3, window_batch=2, pipeline="off")
    piped = load_audio_encoder(str(tiny_dir), window_s=1.0, max_windows=3, window_batch=2, pipeline="on")
    np.testing.assert_allclose(piped.encode(waves), plain.encode(waves), atol=1e-6)
