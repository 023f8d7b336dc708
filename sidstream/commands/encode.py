"""`sidstream encode text|audio`: embed items into an .npy matrix with an ids file beside it.

Bad items get one line each on stderr ("skip <id>: <reason>"); --strict turns any bad item
into a failure (exit 1, nothing written).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import numpy as np

from encoders.base import EncoderInputError


def _ids_path(out: Path, ids: Path | None) -> Path:
    return ids if ids is not None else out.with_suffix(".ids.txt")


def _report_bad(bad: list[tuple[str, str]], strict: bool, total: int) -> None:
    for item_id, reason in bad:
        click.echo(f"skip {item_id}: {reason}", err=True)
    if bad and strict:
        click.echo(f"--strict: {len(bad)} of {total} items are bad; nothing written", err=True)
        sys.exit(1)


def _write(out: Path, ids_out: Path, matrix: np.ndarray, ids: list[str], bad: int) -> None:
    if not ids:
        click.echo("no valid items to encode", err=True)
        sys.exit(1)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, matrix.astype(np.float32))
    ids_out.write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")
    click.echo(f"wrote {out} {matrix.shape} and {ids_out}; skipped {bad}", err=True)


def read_text_items(path: Path) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(item_id, text) pairs and (item_id, reason) for bad lines of a JSON-lines file.

    Invalid UTF-8 bytes are kept as lone surrogates so that validate_text names them.
    """
    from encoders.text import build_track_text, validate_text

    good: list[tuple[str, str]] = []
    bad: list[tuple[str, str]] = []
    for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
        if not raw.strip():
            continue
        line = raw.decode("utf-8", errors="surrogateescape")
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            bad.append((f"line {number}", f"invalid JSON ({exc.msg})"))
            continue
        if not isinstance(record, dict) or record.get("item_id") in (None, ""):
            bad.append((f"line {number}", "no item_id"))
            continue
        item_id = str(record["item_id"])
        text = record["text"] if "text" in record else build_track_text(record)
        reason = validate_text(text)
        if reason is not None:
            bad.append((item_id, reason))
        else:
            good.append((item_id, text))
    return good, bad


@click.group("encode")
def encode() -> None:
    """Embed text items or audio files with the configured encoders."""


@encode.command("text")
@click.option("--input", "input_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="JSON lines with item_id and either text or metadata (title, artist, album, tags, lyrics)")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="output .npy")
@click.option("--ids", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="ids file (default: <out>.ids.txt)")
@click.option("--model", "model_dir", default=None, help="HF model directory (default: the shipped MiniLM)")
@click.option("--device", default=None, help="cpu, cuda, auto (default: settings)")
@click.option("--dtype", default=None, help="float32, float16, bfloat16 (default: settings)")
@click.option("--trust-remote-code", is_flag=True, help="allow the model directory's own code")
@click.option("--strict", is_flag=True, help="fail on any bad item instead of skipping it")
def text_command(input_path: Path, out: Path, ids: Path | None, model_dir: str | None, device: str | None,
                 dtype: str | None, trust_remote_code: bool, strict: bool) -> None:
    """Embed a JSON-lines file of text items."""
    from sidcore.config import get_settings

    settings = get_settings().encoders
    good, bad = read_text_items(input_path)
    _report_bad(bad, strict, len(good) + len(bad))
    if not good:
        _write(out, _ids_path(out, ids), np.zeros((0, 0)), [], len(bad))
    from encoders.text import load_text_encoder

    encoder = load_text_encoder(
        model_dir or settings.text_model_dir, device=device or settings.device, dtype=dtype or settings.dtype,
        max_length=settings.max_length, token_budget=settings.token_budget, trust_remote_code=trust_remote_code,
        pipeline=settings.pipeline, pipeline_bucket=settings.pipeline_bucket,
    )
    matrix = encoder.encode([text for _, text in good])
    _write(out, _ids_path(out, ids), matrix, [item_id for item_id, _ in good], len(bad))


@encode.command("audio")
@click.option("--input", "inputs", multiple=True, required=True, type=click.Path(path_type=Path),
              help="audio file or directory (repeatable); rows follow the sorted file list")
@click.argument("more_inputs", nargs=-1, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="output .npy")
@click.option("--ids", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="ids file (default: <out>.ids.txt); ids are the input paths")
@click.option("--model", "model_spec", default=None, help="logmel | musicnn[:MSD_musicnn|MTT_musicnn] | HF dir")
@click.option("--device", default=None, help="cpu, cuda, auto (default: settings)")
@click.option("--tags-out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="musicnn only: write each file's top tags as JSON lines")
@click.option("--batch-files", default=8, show_default=True, help="files decoded and encoded per micro-batch")
@click.option("--strict", is_flag=True, help="fail on any bad file instead of skipping it")
def audio_command(inputs: tuple[Path, ...], more_inputs: tuple[Path, ...], out: Path, ids: Path | None,
                  model_spec: str | None, device: str | None, tags_out: Path | None, batch_files: int,
                  strict: bool) -> None:
    """Embed audio files (wav, flac, ogg, mp3)."""
    from rich.progress import Progress

    from encoders.audio_io import AudioDecodeError, decode_audio, list_audio_files
    from encoders.audio_loader import load_audio_encoder
    from sidcore.config import get_settings

    settings = get_settings().encoders
    files = list_audio_files([*inputs, *more_inputs])
    encoder = load_audio_encoder(
        model_spec or settings.audio_model, sample_rate=settings.sample_rate, window_s=settings.audio_window_s,
        max_windows=settings.audio_max_windows, device=device or settings.device, dtype=settings.dtype,
        pipeline=settings.pipeline,
    )
    rows: list[np.ndarray] = []
    kept: list[str] = []
    bad: list[tuple[str, str]] = []
    tag_lines: list[str] = []
    pending: list[tuple[str, np.ndarray]] = []

    def flush() -> None:
        if not pending:
            return
        waves = [w for _, w in pending]
        rows.append(encoder.encode(waves))
        kept.extend(i for i, _ in pending)
        if tags_out is not None and hasattr(encoder, "top_tags"):
            for (item_id, _), top in zip(pending, encoder.top_tags(waves, k=10), strict=True):
                tag_lines.append(json.dumps({"item_id": item_id, "top_tags": [[t, round(p, 4)] for t, p in top]}))
        pending.clear()

    with Progress(transient=True, console=None) as progress:
        task = progress.add_task("encoding audio", total=len(files))
        for path in files:
            try:
                pending.append((str(path), decode_audio(path, encoder.sample_rate, settings.audio_max_bytes)))
            except AudioDecodeError as exc:
                bad.append((str(path), exc.reason))
            if len(pending) >= batch_files:
                flush()
            progress.advance(task)
        try:
            flush()
        except EncoderInputError as exc:  # decode_audio already screens; keep the message one line
            raise click.ClickException(str(exc)) from exc
    _report_bad(bad, strict, len(files))
    matrix = np.concatenate(rows) if rows else np.zeros((0, encoder.dim), np.float32)
    if tags_out is not None:
        if not tag_lines:
            click.echo("--tags-out: this model has no tags", err=True)
        else:
            tags_out.write_text("\n".join(tag_lines) + "\n", encoding="utf-8")
    _write(out, _ids_path(out, ids), matrix, kept, len(bad))
