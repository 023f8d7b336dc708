"""`sidstream train ...`, `sidstream eval`, `sidstream data ...` (registered in sidstream/cli.py).

Progress bars go to stderr so that `--json` output on stdout stays machine-readable.
"""

from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, get_args

import click

from sidcore.config import QuantizerMethod

EVAL_EPOCHS = 3  # docs/evaluation.md: one epoch under-trains the ID tables of a data set this small
EVAL_LR = 1e-3


def _settings() -> Any:
    from sidcore.config import get_settings

    return get_settings()


@contextmanager
def _progress(enabled: bool = True) -> Any:
    """A rich progress bar on stderr; yields on_progress(task, done, total)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if not enabled:
        yield None
        return
    tasks: dict[str, Any] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=False) as progress:

        def on_progress(task: str, done: int, total: int) -> None:
            if task not in tasks:
                tasks[task] = progress.add_task(task, total=total)
            progress.update(tasks[task], completed=done, total=total)

        yield on_progress


def _echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, sort_keys=True, default=float))


# ---------------------------------------------------------------------------------------- data
@click.group()
def data() -> None:
    """Data sets: convert, fetch, verify."""


@data.group()
def convert() -> None:
    """Convert a public data set into the dataset contract (docs/evaluation.md)."""


@convert.command("lastfm")
@click.option("--src", type=click.Path(path_type=Path), default=None,
              help="Last.fm-2k folder [settings.lastfm_dir, else ../shared/data/lastfm-2k when present]")
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--neg-per-pos", default=1, show_default=True, help="sampled negatives per positive")
@click.option("--seed", default=0, show_default=True)
@click.option("--embed/--no-embed", default=True, show_default=True, help="write text embeddings (shared encoder, cached)")
@click.option("--audio", "audio", is_flag=False, flag_value="", default=None, metavar="[DIR]",
              help="keep only the artists with audio embeddings and write embeddings/audio.npy; DIR: the audio folder "
                   "[SIDSTREAM_LASTFM_AUDIO_DIR, else ../shared/data/lastfm-2k-audio]")
@click.option("--encoder", "audio_encoder", type=click.Choice(["vggish", "whisper"]), default="vggish", show_default=True,
              help="with --audio: which audio embeddings (recorded in dataset.json)")
def convert_lastfm_cmd(src: Path | None, out: Path, neg_per_pos: int, seed: int, embed: bool, audio: str | None,
                       audio_encoder: str) -> None:
    """Last.fm-2k -> interactions.csv, items.jsonl, embeddings/ (artists as items).

    With --audio: the subset of artists that have audio embeddings, same protocol
    (docs/evaluation.md), with embeddings/audio.npy from --encoder."""
    from sidstream.cli import UserError
    from trainer.dataset import DatasetContractError, write_dataset
    from trainer.embeddings import TextEncoding
    from trainer.lastfm_convert import convert_lastfm, embed_items

    folder = src or _settings().lastfm_source
    if folder is None:
        raise UserError("no Last.fm-2k folder: pass --src DIR or set SIDSTREAM_LASTFM_DIR (default ../shared/data/lastfm-2k, not present)")
    text = TextEncoding.from_settings(_settings())
    if audio is not None:
        from trainer.lastfm_audio import convert_lastfm_audio, resolve_audio_dir

        try:
            audio_dir = resolve_audio_dir(Path(audio) if audio else None, _settings().lastfm_audio_source)
            ds = convert_lastfm_audio(folder, audio_dir, audio_encoder, text, neg_per_pos, seed, embed_text=embed)
        except DatasetContractError as exc:
            raise UserError(str(exc)) from exc
    else:
        ds = convert_lastfm(folder, neg_per_pos=neg_per_pos, seed=seed)
        if embed:
            ds = embed_items(ds, text)
    ds.info.update(_encoder_model_ids(ds, text))
    write_dataset(out, ds)
    _echo_json({k: v for k, v in ds.info.items() if k != "choices"} | {"out": str(out), "fingerprint": ds.fingerprint()})


def _encoder_model_ids(ds: Any, text: Any) -> dict[str, Any]:
    """dataset.json's encoder_model_ids for the arrays a converter wrote: text from the shared text
    encoder, audio under the id the audio converter gave it (`<encoder>@lastfm-2k-audio:<hash>`);
    a codebook fitted on the folder records them (docs/evaluation.md)."""
    ids = {"text": text.model_id} if "text" in ds.embeddings else {}
    if "audio" in ds.embeddings:
        ids["audio"] = ds.info["audio_model_id"]
    return {"encoder_model_ids": ids} if ids else {}


@data.group()
def fetch() -> None:
    """Download a data set from its public origin and verify its checksums."""


@fetch.command("lastfm")
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--src", "url", default=None, help="URL of the zip [the GroupLens origin]")
@click.option("--timeout", default=30.0, show_default=True)
def fetch_lastfm_cmd(out: Path, url: str | None, timeout: float) -> None:
    """HetRec 2011 Last.fm-2k from files.grouplens.org (or --src URL), sha256-verified."""
    from trainer.fetch import LASTFM_URL, FetchError, fetch_lastfm

    try:
        digests = fetch_lastfm(out, url or LASTFM_URL, timeout)
    except FetchError as exc:
        raise click.ClickException(str(exc)) from exc
    _echo_json({"out": str(out), "verified": digests})


@data.command("verify")
@click.option("--src", type=click.Path(path_type=Path), default=None, help="Last.fm-2k folder [settings.lastfm_dir]")
def verify_cmd(src: Path | None) -> None:
    """Check a local Last.fm-2k copy against the recorded sha256 of every file."""
    from sidcore.datasets.lastfm import DatasetError, verify

    folder = src or _settings().lastfm_dir
    try:
        digests = verify(folder)
    except DatasetError as exc:
        raise click.ClickException(str(exc)) from exc
    _echo_json({"src": str(folder), "ok": True, "files": digests})


# ---------------------------------------------------------------------------------------- eval
@click.command("eval")
@click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True)
@click.option("--models", default="din,din+rq,din+psrq,mcca", show_default=True, help="comma-separated model names")
@click.option("--seeds", default=3, show_default=True)
@click.option("--quick", is_flag=True, help="small model, 1 epoch, at most 20k rows (smoke tests)")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per model, then a summary line")
@click.option("--epochs", type=int, default=None, help=f"[{EVAL_EPOCHS}; 1 with --quick]")
@click.option("--lr", type=float, default=EVAL_LR, show_default=True)
@click.option("--batch-size", default=512, show_default=True)
@click.option("--codebook-size", type=int, default=None, help="K per layer [64; 16 with --quick]")
@click.option("--layers", default=3, show_default=True)
@click.option("--alpha", default=1.0, show_default=True, help="PSRQ prefix weight (names may override: din+psrq@0.5)")
@click.option("--activation", type=click.Choice(["dice", "prelu"]), default="dice", show_default=True)
@click.option("--test-fraction", default=0.2, show_default=True)
@click.option("--threads", default=0, help="torch threads (0: torch's default)")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="write results.json, table.md, plot.png here")
@click.option("--modalities", default=None, metavar="A,B",
              help="the embeddings/<name>.npy arrays playing the text and audio roles (both required when given) "
                   "[text,audio; audio optional]")
@click.option("--embed-text", is_flag=True, help="no text.npy: encode the items' text with the shared text encoder")
def eval_cmd(data_dir: Path, models: str, seeds: int, quick: bool, as_json: bool, epochs: int | None, lr: float,
             batch_size: int, codebook_size: int | None, layers: int, alpha: float, activation: str,
             test_fraction: float, threads: int, out: Path | None, modalities: str | None, embed_text: bool) -> None:
    """Train and score models over seeds: All AUC, Cold AUC, Logloss, GAUC (mean ± std).

    Models see two modalities by role: text and audio (--modalities A,B names the arrays), and
    their joint codebook; results name each modality by its given name (the joint one "A+B")."""
    import torch

    from sidstream.cli import UserError
    from trainer.dataset import DatasetContractError, load_dataset
    from trainer.embeddings import TextEncoding
    from trainer.evaluate import QUICK_MODEL, evaluate, parse_spec, plot_results, prepare, results_table
    from trainer.modalities import assign_roles, given_names, model_name_to_roles, parse_modalities
    from trainer.models import ModelConfig
    from trainer.train_loop import TrainConfig

    if threads:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    names = [m.strip() for m in models.split(",") if m.strip()]
    model_base = ModelConfig(activation=activation, **(QUICK_MODEL if quick else {}))
    cb = _settings().codebook
    codebook = cb.model_validate({**cb.model_dump(), "codebook_size": codebook_size or (16 if quick else 64),
                                  "layers": layers, "alpha": alpha})
    train_config = TrainConfig(epochs=epochs or (1 if quick else EVAL_EPOCHS), lr=lr, batch_size=batch_size)
    try:
        dataset, roles = assign_roles(load_dataset(data_dir), parse_modalities(modalities),
                                      TextEncoding.from_settings(_settings()) if embed_text else None)
    except DatasetContractError as exc:
        raise UserError(str(exc)) from exc
    prep = prepare(dataset, test_fraction, max_rows=20_000 if quick else None)
    cache = _settings().cache_dir / "codes"
    specs = [model_name_to_roles(n, roles) for n in names]
    given = dict(zip(specs, names, strict=True))
    try:
        for spec in specs:
            parse_spec(spec, model_base, codebook, prep.modalities)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    emit = (lambda r: _echo_json(given_names({**r, "model": given[r["model"]]}, roles))) if as_json else None
    with _progress(not quick) as on_progress:
        on_step = (lambda s, t, loss: on_progress("training", s, t)) if on_progress else None
        results = evaluate(prep, specs, seeds, model_base, codebook, train_config, cache, emit, on_step)
    results = [given_names({**r, "model": n}, roles) for r, n in zip(results, names, strict=True)]
    described = prep.describe()
    described["modalities"] = {role: roles[role] for role in described["modalities"] if role in roles}
    summary = {
        "summary": True, "models": names, "seeds": seeds, "quick": quick, "data": str(data_dir),
        **described, "epochs": train_config.epochs, "lr": lr, "batch_size": batch_size,
        "codebook": codebook.model_dump(), "model_config": model_base.to_dict(),
        "best_all_auc": max(results, key=lambda r: r["all_auc"])["model"],
        "best_cold_auc": max(results, key=lambda r: r["cold_auc"])["model"],
        "seconds": round(time.perf_counter() - started, 1),
    }
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps({"summary": summary, "results": results}, indent=2, default=float))
        (out / "table.md").write_text(results_table(results) + "\n")
        plot_results(results, out / "plot.png", title=f"{data_dir.name}: {seeds} seeds")
    if as_json:
        _echo_json(summary)
    else:
        click.echo(results_table(results))
        click.echo(f"summary: best All AUC {summary['best_all_auc']}, best Cold AUC {summary['best_cold_auc']}, "
                   f"{summary['seconds']} s")


# --------------------------------------------------------------------------------------- train
@click.group()
def train() -> None:
    """Retraining jobs (cron / Kubernetes CronJob): codebooks, ranker, all.

    Without --data / --interactions a job trains on the running system: the kept embeddings
    (embeddings.kept) and the streaming logger's interaction log (last train.window_days)."""


def _options(*options: Any) -> Any:
    def apply(f: Any) -> Any:
        for option in reversed(options):
            f = option(f)
        return f

    return apply


_common_options = _options(
    click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
                 help="dataset folder (contract)"),
    click.option("--interactions", type=click.Path(exists=True, path_type=Path), default=None,
                 help="Parquet interaction logs (file or folder)"),
    click.option("--items", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
                 help="items.jsonl when only logs are given"),
    click.option("--registry", type=click.Path(path_type=Path), default=None, help="[settings.registry_dir]"),
    click.option("--work-dir", type=click.Path(path_type=Path), default=None, help="checkpoints [<home>/work]"),
    click.option("--promote/--no-promote", default=True, show_default=True, help="make the new version LIVE"),
    click.option("--fail-after-steps", type=int, default=None, hidden=True, help="crash drill"),
    click.option("--json", "as_json", is_flag=True),
)
_codebook_options = _options(
    click.option("--method", type=click.Choice(list(get_args(QuantizerMethod))), default=None,
                 help="quantizer [settings.codebook.method]"),
    click.option("--codebook-size", type=click.IntRange(min=2), default=None, help="K per layer [settings.codebook]"),
    click.option("--layers", type=click.IntRange(min=1), default=None, help="[settings.codebook.layers]"),
    click.option("--alpha", type=float, default=None, help="PSRQ prefix weight [settings.codebook.alpha]"),
    click.option("--force", is_flag=True, help="new codebook version even if the inputs did not change"),
    click.option("--force-gate", is_flag=True, help="promote even if the gate refuses (codebooks; in `train all` "
                 "the ranker's too; logged loudly)"),
    click.option("--fail-after-tracks", type=int, default=None, hidden=True, help="backfill crash drill"),
)
_ranker_options = _options(
    click.option("--model", "model_kind", type=click.Choice(["mcca", "din", "din+sid"]), default="mcca",
                 show_default=True),
    click.option("--epochs", type=click.IntRange(min=1), default=3, show_default=True),
    click.option("--lr", type=float, default=None, help="[1e-3; settings.train.gpu_lr on a GPU]"),
    click.option("--batch-size", type=click.IntRange(min=1), default=None,
                 help="[512; settings.train.gpu_batch_size on a GPU]"),
    click.option("--checkpoint-every", type=click.IntRange(min=0), default=50, show_default=True,
                 help="steps between checkpoints"),
)


def _job_config(kw: dict[str, Any]) -> Any:
    """JobConfig from the options given; codebook settings the options leave out come from
    settings.codebook (anchor, prefix_scale, seed, min_points_per_code included)."""
    from trainer.embeddings import TextEncoding
    from trainer.jobs import JobConfig
    from trainer.models import ModelConfig
    from trainer.ranker_gate import RankerGateConfig
    from trainer.train_loop import TrainConfig, resolve_device

    s = _settings()
    overrides = {k: kw.get(k) for k in ("method", "codebook_size", "layers", "alpha")}
    codebook = s.codebook.model_validate({**s.codebook.model_dump(), **{k: v for k, v in overrides.items() if v is not None}})
    kind = kw.get("model_kind", "mcca")
    model = ModelConfig(kind="din", sid_codebook="text") if kind == "din+sid" else ModelConfig(kind=kind)
    on_gpu = resolve_device(TrainConfig().device).type == "cuda"
    batch_size = kw.get("batch_size") or (s.train.gpu_batch_size if on_gpu else 512)
    lr = kw.get("lr") or (s.train.gpu_lr if on_gpu else 1e-3)
    train_config = TrainConfig(epochs=kw.get("epochs", 3), lr=lr, batch_size=batch_size,
                               checkpoint_every=kw.get("checkpoint_every", 50),
                               compile=on_gpu and s.train.gpu_compile)
    return JobConfig(
        registry=kw["registry"] or s.registry_dir, work_dir=kw["work_dir"] or s.home / "work", data=kw["data_dir"],
        interactions=kw["interactions"], items=kw["items"], codebook=codebook, model=model, train=train_config,
        promote=kw["promote"], fail_after_steps=kw["fail_after_steps"], force=kw.get("force", False),
        force_gate=kw.get("force_gate", False), cuda_graph=s.train.gpu_cuda_graph,
        ranker_gate=RankerGateConfig.from_settings(s.train), text_encoding=TextEncoding.from_settings(s),
    )


def _report(kind: str, version: Any, as_json: bool) -> None:
    if version is None:
        return
    payload = {"kind": kind, "version": version.version, "path": str(version.path),
               "metrics": version.manifest.get("metrics"), "parent_version": version.manifest.get("parent_version")}
    gate = version.manifest.get("gate") if kind == "ranker" else None
    if gate is not None:  # the ranker gate's decision (a refusal is not an error: the job exits 0)
        payload["gate"] = gate
    if as_json:
        _echo_json(payload)
        return
    click.echo(f"{kind} {version.version} registered at {version.path}")
    for modality, m in sorted((version.manifest.get("metrics") or {}).items() if kind == "codebooks" else []):
        refit, kept = m.get("refit") or {}, m.get("kept")
        if kept is not None:  # a refit of a parent version: how it was made and what it kept
            why = f" ({refit['reason']})" if refit.get("reason") else ""
            id_size = "" if kept.get("identity_size_kept") is None else f", K_id kept: {kept['identity_size_kept']}"
            click.echo(f"  {modality}: {refit.get('taken', '?')} refit{why}, semantic paths kept {kept['path']:.4f} "
                       f"(per layer {', '.join(f'{v:.4f}' for v in kept['layers'])}){id_size}")
    if gate is not None:
        live = f"; live {gate['live_version']} AUC {gate['live_auc']}" if gate.get("live_version") else ""
        click.echo(f"ranker gate {'passed' if gate['passed'] else 'REFUSED'}: AUC {gate['candidate_auc']} "
                   f"(interval {gate['candidate_interval']}){live}")
        for reason in gate["reasons"]:
            click.echo(f"  refused: {reason}")


def _run_job(fn: Any, kw: dict[str, Any]) -> Any:
    """Run a job; a user error (bad data, nothing to train on) is one line, a bug keeps its traceback."""
    from sidstream.cli import UserError
    from trainer import ddp
    from trainer.dataset import DatasetContractError
    from trainer.jobs import JobError

    config = _job_config(kw)
    with ddp.process_group(), _progress(ddp.is_main() and sys.stderr.isatty()) as on_progress:
        try:
            if kw["data_dir"] is None and kw["interactions"] is None:
                config = _system_inputs(config, on_progress, kw.get("fail_after_tracks"))
            return fn(config, on_progress)
        except (DatasetContractError, JobError) as exc:
            raise UserError(str(exc)) from exc


def _system_inputs(config: Any, on_progress: Any, fail_after_tracks: int | None) -> Any:
    """Without --data/--interactions a job trains on the running system: the kept embeddings
    and the streaming logger's interaction log; a promoted codebook version goes live through
    a backfill of the catalogue."""
    from dataclasses import replace

    from sidstream.retrain import backfill_promoter, system_dataset

    s = _settings()
    ds, model_ids = system_dataset(s, s.home / "work" / "catalog-kept.sqlite")
    promoter = backfill_promoter(s, on_progress, fail_after_tracks)
    _BACKFILLS.append(promoter)
    return replace(config, dataset=ds, encoder_model_ids=model_ids, on_promote=promoter)


_BACKFILLS: list[Any] = []


@train.command("codebooks")
@_common_options
@_codebook_options
def train_codebooks_cmd(**kw: Any) -> None:
    """Refit text / audio / joint codebooks and register a new version; if the promotion gate
    passes, make it live (without --data/--interactions: on the running system's kept
    embeddings, through a backfill of the catalogue in Feast)."""
    from trainer.jobs import train_codebooks

    _report("codebooks", _run_job(train_codebooks, kw), kw["as_json"])
    _report_backfills(kw["as_json"])


@train.command("ranker")
@_common_options
@_ranker_options
@click.option("--force-gate", is_flag=True, help="promote even if the ranker gate refuses (logged loudly)")
def train_ranker_cmd(**kw: Any) -> None:
    """Train the ranker on the live codebooks (works under torchrun: DDP), register it; it is
    promoted only while the codebook version it was trained on is live and the ranker gate
    passes (settings.train.gate_*: shown above chance, not shown worse than the live ranker)."""
    from trainer.jobs import train_ranker

    _report("ranker", _run_job(train_ranker, kw), kw["as_json"])


@train.command("all")
@_common_options
@_codebook_options
@_ranker_options
def train_all_cmd(**kw: Any) -> None:
    """Refit -> gate -> backfill -> switch, then the ranker on the new codes (the nightly CronJob)."""
    from trainer.jobs import train_all

    codebooks, ranker = _run_job(train_all, kw)
    _report("codebooks", codebooks, kw["as_json"])
    _report_backfills(kw["as_json"])
    _report("ranker", ranker, kw["as_json"])


def _report_backfills(as_json: bool) -> None:
    for promoter in _BACKFILLS:
        for report in promoter.reports:
            if as_json:
                _echo_json({"kind": "backfill", **report})
            else:
                click.echo(f"backfill of {report['version']}: {report['tracks']} tracks, "
                           f"{report['tracks_per_s']} tracks/s; now live")
