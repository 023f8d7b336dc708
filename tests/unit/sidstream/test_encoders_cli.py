"""`sidstream encode text|audio`: outputs, ids, and the bad-input report with and without --strict."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from sidstream.commands.encode import encode

pytestmark = pytest.mark.unit


def _runner() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)  # click < 8.2
    except TypeError:
        return CliRunner()


def test_encode_text_skips_bad_items(tmp_path):
    items = tmp_path / "items.jsonl"
    lines = [json.dumps({"item_id": "a", "text": "ambient synth music"}),
             json.dumps({"item_id": "b", "title": "Nebula", "artist": "Max McCracken", "tags": ["ambient"]}),
             json.dumps({"item_id": "c", "text": ""}), "not json", json.dumps({"text": "no id"})]
    items.write_bytes(("\n".join(lines) + "\n").encode() + b'{"item_id": "d", "text": "bad \xff byte"}\n')
    out = tmp_path / "x.npy"
    result = _runner().invoke(encode, ["text", "--input", str(items), "--out", str(out)])
    assert result.exit_code == 0, result.output
    matrix = np.load(out)
    assert matrix.shape == (2, 384) and matrix.dtype == np.float32
    assert (tmp_path / "x.ids.txt").read_text().split() == ["a", "b"]
    for fragment in ("skip c: empty text", "skip line 4: invalid JSON", "skip line 5: no item_id", "skip d: not valid UTF-8"):
        assert fragment in result.stderr

    strict = _runner().invoke(encode, ["text", "--input", str(items), "--out", str(tmp_path / "y.npy"), "--strict"])
    assert strict.exit_code != 0 and not (tmp_path / "y.npy").exists()


def test_encode_audio_rows_follow_sorted_files(tmp_path):
    t = np.arange(16000 * 2) / 16000
    sf.write(tmp_path / "b.wav", (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000)
    sf.write(tmp_path / "a.flac", (0.3 * np.sin(2 * np.pi * 880 * t)).astype(np.float32), 16000)
    sf.write(tmp_path / "silent.wav", np.zeros(16000, np.float32), 16000)
    (tmp_path / "empty.ogg").write_bytes(b"")
    (tmp_path / "corrupt.mp3").write_bytes(b"not audio at all" * 64)
    out = tmp_path / "out" / "a.npy"
    ids = tmp_path / "ids.txt"
    args = ["audio", "--input", str(tmp_path), str(tmp_path / "missing.wav"), "--out", str(out), "--ids", str(ids),
            "--model", "logmel"]
    result = _runner().invoke(encode, args)
    assert result.exit_code == 0, result.output
    assert [line.rsplit("/", 1)[1] for line in ids.read_text().split()] == ["a.flac", "b.wav"]
    assert np.load(out).shape == (2, 192)
    for fragment in ("silent", "zero-length", "undecodable", "file not found"):
        assert fragment in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.startswith("skip ")]) == 4

    strict = _runner().invoke(encode, [*args, "--strict"])
    assert strict.exit_code != 0
