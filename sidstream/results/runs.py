"""Offline evaluation runs behind the Last.fm tables, executed in a pool of one-thread processes.

A `Run` is one (model, ranker seed, codebook seed, epochs, lr, batch) on one data set; its result is
`trainer.evaluate.run_one`'s. Tables ask for runs, the runner executes the union once (tables
share runs: the alpha table reuses the headline's DIN + PSRQ), each process with one torch and
one faiss thread so that results do not depend on `--jobs`. Finished runs are kept on disk keyed
by the run, the data and the code fingerprint, so an interrupted regeneration resumes and a
`--only` run reuses what an earlier one computed on the same code.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True, order=True)
class Run:
    model: str
    ranker_seed: int
    codebook_seed: int
    epochs: int
    lr: float
    batch: int = 512


@dataclass(frozen=True)
class DataSource:
    """Where a run's data comes from: the Last.fm-2k folder (converted + embedded here) or the
    trainer's synthetic set (`--quick`), with the model and codebook base that go with it."""

    kind: str  # "lastfm" | "synthetic"
    path: str | None = None

    @property
    def quick(self) -> bool:
        return self.kind == "synthetic"


_PREPARED: Any = None
_SOURCE: DataSource | None = None


def load(source: DataSource) -> Any:
    """The prepared data set (trainer.evaluate.Prepared), once per process."""
    global _PREPARED, _SOURCE
    if _PREPARED is not None and _SOURCE == source:
        return _PREPARED
    from trainer.evaluate import prepare

    if source.kind == "lastfm":
        from sidcore.config import get_settings
        from trainer.embeddings import TextEncoding
        from trainer.lastfm_convert import convert_lastfm, embed_items

        if source.path is None or not Path(source.path).is_dir():
            raise FileNotFoundError(f"Last.fm-2k folder not found: {source.path} (settings.lastfm_dir or --lastfm)")
        ds = embed_items(convert_lastfm(Path(source.path)), TextEncoding.from_settings(get_settings()))
        _PREPARED = prepare(ds)
    elif source.kind == "synthetic":
        from trainer.synthetic import make_synthetic

        _PREPARED = prepare(make_synthetic(n_users=200, n_items=400, events_per_user=30, seed=0), max_rows=20_000)
    else:
        raise ValueError(f"unknown data source {source.kind!r}")
    _SOURCE = source
    return _PREPARED


def bases(source: DataSource) -> tuple[Any, Any]:
    """(ModelConfig, CodebookSettings) every run of this source starts from."""
    from sidcore.config import CodebookSettings
    from trainer.evaluate import QUICK_MODEL
    from trainer.models import ModelConfig

    model = ModelConfig(activation="dice", **(QUICK_MODEL if source.quick else {}))
    # PSRQ is the base method, so "mcca" is the paper's MCCA over PSRQ codebooks; psrq_id is named
    codebook = CodebookSettings(method="psrq", codebook_size=8 if source.quick else 64, layers=3, alpha=1.0)
    return model, codebook


def _init_worker() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    from psrq.kmeans import set_threads

    torch.set_num_threads(1)
    set_threads(1)


def _execute(args: tuple[Run, DataSource, str | None]) -> tuple[Run, dict[str, Any]]:
    run, source, cache = args
    from trainer.evaluate import parse_spec, run_one
    from trainer.train_loop import TrainConfig

    prep = load(source)
    model_base, codebook_base = bases(source)
    spec = parse_spec(run.model, model_base, codebook_base, prep.modalities)
    started = time.perf_counter()
    out = run_one(prep, spec, run.ranker_seed, TrainConfig(epochs=run.epochs, lr=run.lr, batch_size=run.batch),
                  Path(cache) if cache else None, codebook_seed=run.codebook_seed)
    out["wall_s"] = round(time.perf_counter() - started, 2)
    out["data_fingerprint"] = prep.fingerprint
    return run, out


def _key(run: Run, source: DataSource, code_fingerprint: str) -> str:
    blob = json.dumps([asdict(run), source.kind, code_fingerprint], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def execute(runs: Iterable[Run], source: DataSource, jobs: int, cache_dir: Path, code_fingerprint: str,
            reuse: bool = True) -> dict[Run, dict[str, Any]]:
    """Every run once (deduplicated), `jobs` processes at a time; results by run."""
    wanted = sorted(set(runs))
    store = cache_dir / "results-runs"
    store.mkdir(parents=True, exist_ok=True)
    done: dict[Run, dict[str, Any]] = {}
    for run in wanted:
        path = store / f"{_key(run, source, code_fingerprint)}.json"
        if reuse and path.is_file():
            done[run] = json.loads(path.read_text())
    todo = [r for r in wanted if r not in done]
    # the slow ones first, so the pool does not end on one long run
    todo.sort(key=lambda r: (-(r.epochs * (3 if "mcca" in r.model else 2 if "+" in r.model else 1)), r))
    log.info("%d runs: %d kept from an earlier regeneration on this code, %d to run with %d processes",
             len(wanted), len(done), len(todo), jobs)
    if not todo:
        return done
    codes_cache = str(cache_dir / "codes")
    started = time.perf_counter()
    tasks = [(r, source, codes_cache) for r in todo]
    # a SIGTERM (a CI timeout, kill) must not orphan the pool: turn it into SystemExit so that
    # the `finally` below terminates the workers
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm) if threading.current_thread() is threading.main_thread() else None
    if jobs <= 1:
        _init_worker()
        results: Iterable[tuple[Run, dict[str, Any]]] = map(_execute, tasks)
        pool = None
    else:
        pool = multiprocessing.get_context("spawn").Pool(jobs, initializer=_init_worker)
        results = pool.imap_unordered(_execute, tasks)
    try:
        for i, (run, out) in enumerate(results, 1):
            done[run] = out
            path = store / f"{_key(run, source, code_fingerprint)}.json"
            path.with_suffix(".tmp").write_text(json.dumps(out, default=float))
            path.with_suffix(".tmp").replace(path)
            elapsed = time.perf_counter() - started
            log.info("[%d/%d] %s ranker %d codebook %d: cold AUC %.4f (%.0f s; %.0f s left)", i, len(todo), run.model,
                     run.ranker_seed, run.codebook_seed, out["cold_auc"], out["wall_s"], elapsed / i * (len(todo) - i))
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return done


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)
