"""dataset.json's `encoder_model_ids`: checked when a folder is read, recorded by
`train codebooks --data` in the codebook manifest the live assigner reads (a missing entry: no
check, as before), and written by the Last.fm converter for the arrays it writes."""

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from sidcore.config import CodebookSettings
from sidstream.commands.train import data
from sidstream.results.digest import write_hetrec
from streams.codebooks import ActiveCodebooks
from trainer.dataset import DatasetContractError, load_dataset, write_dataset
from trainer.jobs import GateRefused, JobConfig, train_codebooks
from trainer.synthetic import make_synthetic

pytestmark = pytest.mark.unit


@pytest.fixture
def folder(tmp_path):
    ds = make_synthetic(n_users=40, n_items=80, events_per_user=12, modalities=("text", "audio"), seed=4)
    write_dataset(tmp_path / "data", ds)
    return tmp_path / "data"


def _with_ids(folder, ids):
    info_path = folder / "dataset.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    info_path.write_text(json.dumps({**info, "encoder_model_ids": ids}))


def _fit(tmp_path, folder, **kw):
    from psrq import load_codebook_set

    version = train_codebooks(JobConfig(registry=tmp_path / "registry", work_dir=tmp_path / "work", data=folder,
                                        codebook=CodebookSettings(codebook_size=8, layers=2), **kw))
    return version, ActiveCodebooks(version.version, load_codebook_set(version.path))


def test_train_codebooks_on_a_folder_records_its_encoder_model_ids_for_the_assigner(tmp_path, folder):
    _with_ids(folder, {"text": "my-text/v3", "audio": "own-encoder/v1"})
    version, active = _fit(tmp_path, folder)
    assert version.manifest["encoder_model_ids"] == {"text": "my-text/v3", "audio": "own-encoder/v1"}
    assert active.model_id("audio") == "own-encoder/v1" and active.model_id("text") == "my-text/v3"
    # only the model ids changed: a new version, not the old one reused; the gate refuses to make
    # it live over a codebook fitted on another encoder (its tracks' kept embeddings are that one's)
    _with_ids(folder, {"text": "my-text/v3", "audio": "own-encoder/v2"})
    again, active = _fit(tmp_path, folder, promote=False)
    assert again.version != version.version and active.model_id("audio") == "own-encoder/v2"
    with pytest.raises(GateRefused, match="audio: encoder 'own-encoder/v2' != live encoder 'own-encoder/v1'"):
        _fit(tmp_path, folder, force=True)


def test_a_folder_without_encoder_model_ids_gives_a_codebook_that_checks_none(tmp_path, folder):
    version, active = _fit(tmp_path, folder)
    assert version.manifest["encoder_model_ids"] == {}
    assert active.model_id("audio") is None and active.model_id("text") is None


def test_the_jobs_own_model_ids_win_over_the_folders(tmp_path, folder):
    _with_ids(folder, {"audio": "own-encoder/v1"})
    _, active = _fit(tmp_path, folder, encoder_model_ids={"text": "t", "audio": "a"})
    assert active.model_id("audio") == "a"


@pytest.mark.parametrize(("ids", "message"), [
    ({"image": "clip/v1"}, "names image but there is no embeddings/<modality>.npy for it (arrays: audio, text)"),
    ({"audio": ""}, "must map each modality to a non-empty model id string"),
    (["own-encoder/v1"], "must map each modality to a non-empty model id string"),
])
def test_a_bad_encoder_model_ids_entry_is_a_contract_error(folder, ids, message):
    _with_ids(folder, ids)
    with pytest.raises(DatasetContractError) as err:
        load_dataset(folder)
    assert message in str(err.value) and "dataset.json" in str(err.value)


def test_lastfm_audio_converter_records_the_audio_model_id_of_the_chosen_encoder(tmp_path):
    src = write_hetrec(tmp_path / "hetrec", users=30, artists=40)
    audio = tmp_path / "audio"
    audio.mkdir()
    artists = list(range(1, 41, 2))
    pd.DataFrame({"row": np.arange(len(artists)), "artistID": artists}).to_csv(audio / "items.tsv", sep="\t", index=False)
    for name, d in (("vggish", 8), ("whisper", 12)):
        np.save(audio / f"{name}.npy", np.random.default_rng(0).normal(size=(len(artists), d)).astype(np.float32))
    ids = {}
    for encoder in ("vggish", "whisper"):
        out = tmp_path / encoder
        result = CliRunner().invoke(data, ["convert", "lastfm", "--src", str(src), "--out", str(out), "--no-embed",
                                           "--audio", str(audio), "--encoder", encoder], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        ds = load_dataset(out)
        assert set(ds.encoder_model_ids) == {"audio"}  # no text array written (--no-embed): no text id
        ids[encoder] = ds.encoder_model_ids["audio"]
    assert ids["vggish"].startswith("vggish@lastfm-2k-audio:") and ids["whisper"].startswith("whisper@lastfm-2k-audio:")


def test_text_model_id_is_the_loaded_encoders():
    from encoders import load_text_encoder
    from encoders.text import DEFAULT_TEXT_MODEL_ID, default_text_model_dir, text_model_id

    assert text_model_id(None) == DEFAULT_TEXT_MODEL_ID == load_text_encoder().model_id
    assert text_model_id(default_text_model_dir()) == load_text_encoder(default_text_model_dir()).model_id
