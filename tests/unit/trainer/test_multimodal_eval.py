"""Two modalities by name: the Last.fm audio converter, `eval --modalities A,B`, the error cases,
and the forward pass of every model of the audio table (DIN + summed SIDs, MCCA's ablations).
Small synthetic data generated here (no ../shared)."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from sidcore.config import CodebookSettings
from sidstream.commands.train import data, eval_cmd
from sidstream.results.digest import write_hetrec
from sidstream.results.lastfm_audio import MODELS
from trainer.dataset import load_dataset, write_dataset
from trainer.evaluate import parse_spec
from trainer.models import ModelConfig, build_model
from trainer.synthetic import make_synthetic

pytestmark = pytest.mark.unit


def _audio_dir(folder, artists, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    pd.DataFrame({"row": np.arange(len(artists)), "artistID": artists}).to_csv(folder / "items.tsv", sep="\t", index=False)
    np.save(folder / "vggish.npy", rng.normal(size=(len(artists), 8)))
    np.save(folder / "whisper.npy", rng.normal(size=(len(artists), 12)).astype(np.float32))
    return folder


def test_convert_lastfm_audio_keeps_the_artists_with_audio_and_records_the_encoder(tmp_path):
    src = write_hetrec(tmp_path / "hetrec", users=40, artists=60)
    with_audio = list(range(1, 61, 2))  # every other artist has audio
    audio = _audio_dir(tmp_path / "audio", with_audio)
    result = CliRunner().invoke(data, ["convert", "lastfm", "--src", str(src), "--out", str(tmp_path / "out"), "--no-embed",
                                       "--audio", str(audio), "--encoder", "whisper"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    ds = load_dataset(tmp_path / "out")
    keep = {f"lastfm:{a}" for a in with_audio}
    assert set(ds.interactions["item_id"]) <= keep and set(ds.embedding_ids) <= keep
    assert set(ds.embeddings) == {"audio"} and ds.embeddings["audio"].shape == (len(ds.embedding_ids), 12)
    # each item's row is its own artist's vector from whisper.npy
    W = np.load(audio / "whisper.npy")
    i = ds.embedding_ids.index(ds.embedding_ids[3])
    assert np.allclose(ds.embeddings["audio"][i], W[with_audio.index(int(ds.embedding_ids[3].split(":")[1]))])
    assert ds.info["audio_encoder"] == "whisper" and ds.info["audio_model_id"].startswith("whisper@")
    pos = ds.interactions[ds.interactions["label"] == 1]
    neg = ds.interactions[ds.interactions["label"] == 0]
    assert len(neg) > 0 and not set(zip(neg.user_id, neg.item_id, strict=True)) & set(zip(pos.user_id, pos.item_id, strict=True))


def test_convert_lastfm_audio_without_a_folder_names_the_setting(tmp_path, monkeypatch):
    import sidcore.config

    monkeypatch.setattr(sidcore.config, "DEFAULT_LASTFM_AUDIO_DIR", tmp_path / "absent")
    src = write_hetrec(tmp_path / "hetrec")
    result = CliRunner().invoke(data, ["convert", "lastfm", "--src", str(src), "--out", str(tmp_path / "out"), "--no-embed",
                                       "--audio"])
    assert result.exit_code == 1
    assert "SIDSTREAM_LASTFM_AUDIO_DIR" in result.output and len(result.output.strip().splitlines()) == 1


@pytest.fixture
def two_modalities(tmp_path):
    ds = make_synthetic(n_users=60, n_items=120, events_per_user=16, modalities=("lyrics", "sound"), seed=3)
    write_dataset(tmp_path / "syn", ds)
    return tmp_path / "syn", ds


def _eval(folder, *args):
    return CliRunner().invoke(eval_cmd, ["--data", str(folder), "--seeds", "1", "--quick", "--json", "--threads", "1", *args])


def test_eval_modalities_by_name_reports_each_under_its_given_name(two_modalities):
    folder, _ = two_modalities
    result = _eval(folder, "--modalities", "lyrics,sound", "--models",
                   "din+psrq@m=sound,din+psrq@m=joint,din-sum+psrq,mcca,mcca-no-text,mcca-no-mjc")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.strip().splitlines() if line.startswith("{")]
    by_model = {r["model"]: r for r in lines if "model" in r}
    assert set(by_model["din+psrq@m=sound"]["distinct_sids"]) == {"sound"}
    assert set(by_model["din+psrq@m=joint"]["distinct_sids"]) == {"lyrics+sound"}
    assert set(by_model["mcca"]["distinct_sids"]) == {"lyrics", "sound", "lyrics+sound"}
    assert set(by_model["mcca"]["codebook"]["sizes"]) == {"lyrics", "sound", "lyrics+sound"}
    assert set(by_model["mcca-no-text"]["distinct_sids"]) == {"sound", "lyrics+sound"}
    assert set(by_model["mcca-no-mjc"]["distinct_sids"]) == {"lyrics", "sound"}
    summary = lines[-1]
    assert summary["summary"] and summary["modalities"] == {"text": "lyrics", "audio": "sound", "joint": "lyrics+sound"}


def test_eval_model_names_may_use_the_given_modality_name(two_modalities):
    folder, _ = two_modalities
    result = _eval(folder, "--modalities", "lyrics,sound", "--models", "din+psrq@m=sound")
    assert result.exit_code == 0, result.output
    first = json.loads(result.output.strip().splitlines()[0])
    assert first["model"] == "din+psrq@m=sound" and set(first["distinct_sids"]) == {"sound"}


def test_eval_a_name_without_an_array_is_an_error_not_a_text_fallback(two_modalities):
    folder, _ = two_modalities
    result = _eval(folder, "--modalities", "lyrics,video", "--models", "mcca")
    assert result.exit_code == 1 and "no video.npy" in result.output
    # the default names: no text.npy here, and the items have text: an error, not an encoding of the text
    result = _eval(folder, "--models", "mcca")
    assert result.exit_code == 1 and "no text.npy" in result.output and "--embed-text" in result.output


def test_eval_a_modality_with_missing_rows_names_the_count(two_modalities, tmp_path):
    folder, ds = two_modalities
    ds.embeddings["sound"][[1, 5, 9, 11, 17]] = np.nan
    write_dataset(tmp_path / "holes", ds)
    result = _eval(tmp_path / "holes", "--modalities", "lyrics,sound", "--models", "mcca")
    assert result.exit_code == 1 and "sound: 5 of 120 items have no row" in result.output


def _batch(codebooks, b=4, t=5, L=3, K=8, rows=20):
    g = torch.Generator().manual_seed(0)
    out = {"item": torch.randint(1, rows, (b,), generator=g), "hist_item": torch.randint(1, rows, (b, t), generator=g),
           "hist_mask": torch.rand(b, t, generator=g) > 0.3}
    for m in codebooks:
        out[f"codes:{m}"] = torch.randint(-1, K, (b, L), generator=g)
        out[f"hist_codes:{m}"] = torch.randint(-1, K, (b, t, L), generator=g)
    return out


EXPECTED_INPUTS = {"din": set(), "din+psrq": {"text"}, "din+psrq@m=audio": {"audio"}, "din+psrq@m=joint": {"joint"},
                   "din+rq@m=joint": {"joint"}, "din-sum+psrq": {"text", "audio", "joint"}, "mcca": {"text", "audio", "joint"},
                   "mcca-no-mjc": {"text", "audio"}, "mcca-no-audio": {"text", "joint"}, "mcca-no-text": {"audio", "joint"}}


@pytest.mark.parametrize("name", [m for m, _ in MODELS])
def test_each_model_of_the_audio_table_reads_exactly_its_codebooks(name):
    modalities = ["audio", "joint", "text"]
    cb = CodebookSettings(method="psrq", codebook_size=8, layers=3)
    spec = parse_spec(name, ModelConfig(emb_dim=8, att_hidden=(8,), mlp_hidden=(16,)), cb, modalities)
    fitted = modalities if spec.codebooks is None else list(spec.codebooks)
    if spec.codebook is None:
        fitted = []
    assert set(fitted) == EXPECTED_INPUTS[name]
    torch.manual_seed(0)
    model = build_model(spec.model, 20, {m: [8, 8, 8] for m in fitted}).eval()
    batch = _batch(modalities)
    logits = model(batch)
    assert logits.shape == (4,) and torch.isfinite(logits).all()
    for m in modalities:  # changing a codebook's codes (target and history) changes the output iff the model reads it
        other = dict(batch)
        other[f"codes:{m}"] = (batch[f"codes:{m}"] + 3) % 8
        other[f"hist_codes:{m}"] = (batch[f"hist_codes:{m}"] + 3) % 8
        changed = not torch.allclose(model(other), logits)
        assert changed == (m in EXPECTED_INPUTS[name]), (name, m)
