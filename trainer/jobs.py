"""Periodic retraining jobs: refit codebooks, train the ranker, register both, announce them.

Each job reads the offline store (Parquet interaction logs) and/or a dataset folder, works in a
work directory named by its inputs (data fingerprint + config), checkpoints every step there,
and registers a new immutable version in the artifact registry when it finishes. A killed job
rerun with the same inputs finds its work directory and resumes. A new codebook version is
announced by promoting it (the registry's LIVE pointer, which the streaming assigner watches).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from psrq.fitting import fit_codebook_set, present_rows, refit_codebook
from sidcore.config import CodebookSettings, Settings
from sidcore.registry import ArtifactVersion, Registry
from trainer import ddp
from trainer.codes import encode_codes, with_joint
from trainer.dataset import Dataset, DatasetContractError, load_dataset, read_interaction_logs, read_items
from trainer.embeddings import TextEncoding, item_embeddings
from trainer.evaluate import prepare
from trainer.features import IdVocab, Lookup
from trainer.graphed import train_model_graphed, use_cuda_graph
from trainer.metrics import ranking_metrics
from trainer.models import ModelConfig, build_model
from trainer.ranker_gate import (
    WARM_CHILD,
    RankerGateConfig,
    RankerGateResult,
    gate_ranker,
    holdout_fraction,
    serving_codebooks,
)
from trainer.train_loop import InjectedFailure, TrainConfig, predict, train_model

log = logging.getLogger(__name__)

CODEBOOKS, RANKER = "codebooks", "ranker"


class JobError(RuntimeError):
    """A job cannot run with what it was given (the user can fix it); not a bug."""


class GateRefused(JobError):
    """A refitted codebook version was registered but the promotion gate refused it."""

    def __init__(self, version: str, reasons: list[str]) -> None:
        super().__init__(f"codebooks {version} registered but refused by the promotion gate: {'; '.join(reasons)}")
        self.version, self.reasons = version, reasons
OnProgress = Callable[[str, int, int], None]  # (task, done, total)


@dataclass(frozen=True)
class JobConfig:
    registry: Path
    work_dir: Path
    data: Path | None = None  # dataset folder (contract)
    interactions: Path | None = None  # Parquet logs (file or folder); overrides the folder's csv
    items: Path | None = None  # items.jsonl when only logs are given
    codebook: CodebookSettings = field(default_factory=CodebookSettings)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=3, checkpoint_every=50))
    test_fraction: float = 0.2
    promote: bool = True
    fail_after_steps: int | None = None  # crash drill: raise after this many steps
    force: bool = False  # register a new codebook version even if the newest one has the same inputs
    dataset: Dataset | None = None  # in-memory inputs (the system's own: kept embeddings + interaction log)
    # the encoders the embeddings came from; {} takes the data set's (dataset.json's encoder_model_ids)
    encoder_model_ids: dict[str, str] = field(default_factory=dict)
    force_gate: bool = False  # promote even if the gate refuses (loudly)
    # how a gated version goes live: None flips LIVE at once; the streaming system passes a
    # backfill that re-codes the catalogue first (streams.backfill.run_backfill)
    on_promote: Callable[[ArtifactVersion], None] | None = None
    codebook_version: str | None = None  # ranker: train on this codebook version (default: the live one)
    # ranker on one CUDA device: the whole step as one CUDA graph (trainer.graphed); no effect elsewhere
    cuda_graph: bool = True
    ranker_gate: RankerGateConfig = field(default_factory=RankerGateConfig)  # settings.train.gate_*, holdout_days
    # how to embed item texts the data set has no text embeddings for (the CLI: its settings'
    # cache dir and encoders); None: the data set must carry them (trainer.embeddings.item_embeddings)
    text_encoding: TextEncoding | None = None


def load_source(config: JobConfig) -> Dataset:
    """The job's data: in-memory inputs, a dataset folder, Parquet logs, or both (logs replace
    the folder's csv)."""
    if config.dataset is not None:
        return config.dataset
    if config.data is not None:
        ds = load_dataset(config.data)
        if config.interactions is not None:
            ds.interactions = read_interaction_logs(config.interactions)
        return ds
    if config.interactions is None:
        raise DatasetContractError("give --data DIR or --interactions DIR_OR_FILE")
    items = read_items(config.items) if config.items is not None else pd.DataFrame({"item_id": pd.Series([], dtype=str)})
    return Dataset(read_interaction_logs(config.interactions), items)


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _embedding_fingerprint(embeddings: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for m in sorted(embeddings):
        h.update(m.encode())
        h.update(np.ascontiguousarray(embeddings[m]).tobytes())
    return h.hexdigest()[:16]


def _catalog(ds: Dataset) -> list[str]:
    return sorted(set(ds.items["item_id"]) | set(ds.interactions["item_id"]) | set(ds.embedding_ids))


def _codebook_metrics(q: Any, X: np.ndarray) -> dict[str, Any]:
    from psrq.health import sid_collisions

    codes = q.encode(X)
    used = [float(len(np.unique(codes[:, layer])) / k) for layer, k in enumerate(q.codebook_sizes)]
    return {**sid_collisions(codes), "utilisation_per_layer": used}


def _same_inputs(registry: Registry, fit_fp: str, codebook: CodebookSettings, model_ids: dict[str, str]) -> ArtifactVersion | None:
    versions = registry.versions(CODEBOOKS)
    if not versions:
        return None
    newest = versions[-1]
    m = newest.manifest
    same = m.get("fit_data_fingerprint") == fit_fp and m.get("config") == codebook.model_dump()
    return newest if same and (m.get("encoder_model_ids") or {}) == model_ids else None


def _load_parent_set(live: ArtifactVersion | None) -> Any:
    if live is None:
        return None
    from psrq import load_codebook_set

    try:
        return load_codebook_set(live.path)
    except Exception as exc:  # noqa: BLE001 - an unreadable parent only costs stable IDs
        log.warning("live codebooks %s unreadable (%s); fitting without alignment", live.version, exc)
        return None


def _compatible_parent(q: Any, parent_set: Any, modality: str) -> Any:
    parent = None if parent_set is None else parent_set.codebooks.get(modality)
    if parent is None or parent.method != q.method or parent.dim != q.dim or parent.num_layers != q.num_layers:
        return None
    return parent


def _parent_codebook(parent_set: Any, modality: str) -> Any:
    return None if parent_set is None else parent_set.codebooks.get(modality)


def kept_shares(parent: Any, child: Any, X: np.ndarray) -> dict[str, Any]:
    """What a refit keeps of the parent's IDs on X: the share of rows whose full semantic path is
    unchanged, per semantic layer, and (psrq_id) whether K_id, the identity codes' meaning, is kept
    (a track with a kept path then claims its old identity code first: streams.identity)."""
    def semantic(q: Any) -> np.ndarray:
        codes = q.semantic_encode(X) if hasattr(q, "semantic_encode") else q.encode(X)
        return np.asarray(codes)[:, : q.semantic_layers]

    same = semantic(child) == semantic(parent)
    out: dict[str, Any] = {"path": float(same.all(axis=1).mean()), "layers": same.mean(axis=0).astype(float).tolist()}
    if hasattr(child, "identity_size"):
        out["identity_size_kept"] = bool(child.identity_size == parent.identity_size)
    return out


def _churn(q: Any, parent_set: Any, modality: str, X: np.ndarray) -> dict[str, Any] | None:
    """Share of items whose SID differs from the parent version's (after alignment)."""
    from psrq.align import churn

    parent = _compatible_parent(q, parent_set, modality)
    return None if parent is None else churn(parent.encode(X), q.encode(X))


def train_codebooks(config: JobConfig, on_progress: OnProgress | None = None) -> ArtifactVersion:
    """Fit text / audio / joint codebooks, register them as a new version, promote it."""
    from psrq import load_codebook, save_codebook

    registry = Registry(config.registry)
    registry.clean_incomplete(CODEBOOKS)
    ds = load_source(config)
    catalog = _catalog(ds)
    embeddings = with_joint(item_embeddings(ds, catalog, text=config.text_encoding))
    if not embeddings:
        raise DatasetContractError("no item text or embeddings: cannot fit codebooks")
    fit_fp = _embedding_fingerprint(embeddings)
    # recorded in the set manifest: the live assigner refuses embeddings of other model ids (model_mismatch)
    model_ids = config.encoder_model_ids or ds.encoder_model_ids
    existing = _same_inputs(registry, fit_fp, config.codebook, model_ids)
    if existing is not None and not config.force:
        # nothing changed since the newest version: a rerun (e.g. after a crash) reuses it
        log.info("codebooks %s already fitted on these inputs; reusing it", existing.version)
        if config.promote:
            _gate_and_promote(registry, existing, config, embeddings)
        return existing
    work = config.work_dir / f"codebooks-{_key(fit_fp, config.codebook.model_dump())}"
    work.mkdir(parents=True, exist_ok=True)
    codebooks, metrics = {}, {}
    live = registry.live(CODEBOOKS)
    parent_set = _load_parent_set(live)
    modalities = sorted(embeddings)
    for done, modality in enumerate(modalities):
        X = embeddings[modality][present_rows(embeddings[modality])]
        step_dir = work / modality
        if (step_dir / "manifest.json").is_file():  # fitted before a crash: resume
            codebooks[modality], _ = load_codebook(step_dir)
            log.info("codebooks: %s loaded from %s", modality, step_dir)
        else:
            # stable IDs: a warm refit from the parent's codebooks (or a fresh fit aligned to them)
            q, refit = refit_codebook(X, config.codebook, _parent_codebook(parent_set, modality))
            save_codebook(q, step_dir, extra={"refit": refit})
            codebooks[modality] = q
        metrics[modality] = _codebook_metrics(codebooks[modality], X)
        refit = json.loads((step_dir / "manifest.json").read_text()).get("extra", {}).get("refit")
        if refit is not None:
            metrics[modality]["refit"] = refit
        churn = _churn(codebooks[modality], parent_set, modality, X)
        if churn is not None:
            metrics[modality]["churn_vs_parent"] = churn
            metrics[modality]["kept"] = kept_shares(_compatible_parent(codebooks[modality], parent_set, modality),
                                                    codebooks[modality], X)
        if on_progress:
            on_progress("codebooks", done + 1, len(modalities))
        if config.fail_after_steps is not None and done + 1 >= config.fail_after_steps:
            raise InjectedFailure(f"injected failure after fitting {done + 1} codebook(s)")

    parent = live.version if live else None
    record = {"config": config.codebook.model_dump(), "data_fingerprint": ds.fingerprint(),
              "fit_data_fingerprint": fit_fp, "metrics": metrics, "parent_version": parent,
              "modalities": modalities, "items": len(catalog), "encoder_model_ids": model_ids}

    version = register_codebook_set(
        registry, codebooks, record, False,
        manifests_extra={"trainer": record, "encoder_model_ids": model_ids},
        fit_data={m: embeddings[m][present_rows(embeddings[m])] for m in codebooks}, metrics=metrics,
        parent=(live.path if live else None),
    )
    shutil.rmtree(work, ignore_errors=True)
    log.info("codebooks %s registered (parent %s)", version.version, parent)
    if config.promote:
        _gate_and_promote(registry, version, config, embeddings, parent_set)  # the live set loaded for alignment
    return version


def _gate_and_promote(registry: Registry, version: ArtifactVersion, config: JobConfig, embeddings: dict[str, np.ndarray],
                      live_set: Any = None) -> None:
    live = registry.live(CODEBOOKS)
    if live is not None and live.version == version.version:
        return
    live_set = live_set if live_set is not None else _load_parent_set(live)
    gate_and_promote(registry, version, live_set, config.codebook, embeddings, config.force_gate, config.on_promote)


def gate_and_promote(
    registry: Registry, version: ArtifactVersion, live_set: Any, codebook: CodebookSettings,
    fit_data: dict[str, np.ndarray] | None, force: bool, on_promote: Callable[[ArtifactVersion], None] | None,
    **event_extra: Any,
) -> None:
    """Gate `version` against the live set (None: the first version; no fit data: structural
    checks only), log the outcome in the registry's EVENTS.jsonl, and either raise GateRefused
    or promote it through `on_promote` (None: flip LIVE at once). `force` overrides, loudly."""
    from psrq import load_codebook_set
    from trainer.gate import check

    live = registry.live(CODEBOOKS)
    candidate = load_codebook_set(version.path)
    if live_set is not None:
        live_set.manifest.setdefault("version", live.version if live else "")
    result = check(candidate.codebooks, candidate.manifest.get("encoder_model_ids") or {}, live_set, fit_data, codebook)
    event = {"version": version.version, "previous": live.version if live else None, **event_extra,
             "gate": result.to_dict()}
    if not result.passed and not force:
        registry.log_event(CODEBOOKS, {"event": "refused", **event})
        raise GateRefused(version.version, result.reasons)
    if not result.passed:
        log.warning("codebooks %s: gate overridden with --force: %s", version.version, "; ".join(result.reasons))
    registry.log_event(CODEBOOKS, {"event": "promoting", "forced": not result.passed, **event})
    if on_promote is not None:
        on_promote(version)
    else:
        registry.promote(CODEBOOKS, version.version)


def register_codebook_set(
    registry: Registry, quantizers: dict[str, Any], record: dict[str, Any], promote: bool, **save_options: Any
) -> ArtifactVersion:
    """Save a fitted set as a new immutable registry version (manifest = record); promote it
    (make it LIVE: the streaming assigner swaps to it) when asked."""
    from psrq import save_codebook_set

    def write(tmp: Path) -> dict[str, Any]:
        save_codebook_set(tmp, quantizers, **save_options)
        return record

    version = registry.register(CODEBOOKS, write)
    if promote:
        registry.promote(CODEBOOKS, version.version)
    return version


def bootstrap_codebooks(
    settings: Settings,
    text_X: np.ndarray,
    text_model_id: str,
    audio_X: np.ndarray | None = None,
    audio_text_X: np.ndarray | None = None,
    audio_model_id: str = "",
    promote: bool = True,
) -> ArtifactVersion:
    """The first codebook version of a catalog (the demo's bootstrap): text on the catalog's
    texts; audio on recording windows and joint on [their track's text ⊕ window], when given."""
    from psrq import joint_embedding

    embeddings = {"text": text_X}
    if audio_X is not None and audio_text_X is not None:
        embeddings.update(audio=audio_X, joint=joint_embedding(audio_text_X, audio_X))
    quantizers = fit_codebook_set(embeddings, settings.codebook)
    registry = Registry(settings.registry_dir)
    parent = registry.live(CODEBOOKS)
    model_ids = {"text": text_model_id, "audio": audio_model_id}
    record = {
        "modalities": sorted(quantizers),
        "config": settings.codebook.model_dump(),
        "codebook_sizes": {m: list(q.codebook_sizes) for m, q in quantizers.items()},
        "fit_rows": {m: int(len(X)) for m, X in embeddings.items()},
        "encoder_model_ids": model_ids,
        "parent_version": parent.version if parent else None,
    }
    version = register_codebook_set(
        registry, quantizers, record, promote,
        manifests_extra={"encoder_model_ids": model_ids, "source": "catalog bootstrap (trainer.jobs)"},
    )
    log.info("registered codebook version %s (%s)", version.version, ", ".join(sorted(quantizers)))
    return version


def item_codes(
    codebook_version: ArtifactVersion, ds: Dataset, catalog: list[str], text: TextEncoding | None
) -> tuple[dict[str, np.ndarray], dict[str, list[int]]]:
    """SIDs of every catalog item under a registered codebook version (-1 where a modality is missing);
    `text`: how to embed item texts without text embeddings (trainer.embeddings.item_embeddings)."""
    from psrq import load_codebook_set

    cs = load_codebook_set(codebook_version.path)
    embeddings = with_joint(item_embeddings(ds, catalog, [m for m in cs.modalities if m != "joint"], text=text))
    codes = encode_codes(cs.codebooks, embeddings)
    return codes, {m: cs.codebooks[m].semantic_sizes for m in codes}


def train_ranker(config: JobConfig, on_progress: OnProgress | None = None) -> ArtifactVersion | None:
    """Train the ranker on the live codebooks' SIDs; register (and promote) it. Under torchrun
    every rank trains its shard; rank 0 registers; returns None on other ranks."""
    registry = Registry(config.registry)
    if ddp.is_main():
        registry.clean_incomplete(RANKER)
    ds = load_source(config)
    test_fraction = holdout_fraction(ds.interactions["timestamp"].to_numpy(), config.ranker_gate.holdout_days,
                                     config.test_fraction)
    prep = prepare(ds, test_fraction, text=config.text_encoding)
    needs_codes = config.model.kind == "mcca" or config.model.sid_codebook is not None
    live = registry.get(CODEBOOKS, config.codebook_version) if config.codebook_version else registry.live(CODEBOOKS)
    if needs_codes and live is None:
        raise JobError(f"no live codebook version in {config.registry}; run `sidstream train codebooks` first")
    codes, sizes = item_codes(live, ds, prep.catalog.tolist(), config.text_encoding) if (needs_codes and live) else ({}, {})
    lookup = Lookup(prep.vocab.rows(prep.catalog.tolist()), codes)
    codebook_version = live.version if (needs_codes and live) else None
    key = _key(prep.fingerprint, codebook_version, config.model.to_dict(), config.train.to_dict(), test_fraction)
    work = config.work_dir / f"ranker-{key}"
    torch.manual_seed(config.train.seed)
    model = build_model(config.model, prep.vocab.n_rows, sizes)
    train = train_model_graphed if use_cuda_graph(config.cuda_graph, config.train) else train_model
    stats = train(
        model, prep.train, lookup, config.train, checkpoint=work / "checkpoint.pt",
        on_step=(lambda s, t, loss: on_progress("ranker", s, t)) if on_progress else None,
        fail_after_steps=config.fail_after_steps, extra_state={"model_config": config.model.to_dict()},
    )
    if not ddp.is_main():
        ddp.barrier()
        return None
    probs = predict(model, prep.test, lookup, device=config.train.device, data_path=config.train.data_path)
    metrics = ranking_metrics(prep.test.users, prep.catalog[prep.test.items], prep.test.labels, probs,
                              prep.catalog[prep.train.items])
    previous = registry.live(RANKER)
    gate = _gate(registry, previous, ds, prep, probs, config)
    record = {"config": {"model": config.model.to_dict(), "train": config.train.to_dict(),
                         "test_fraction": test_fraction},
              "gate": gate.to_dict(),
              "data_fingerprint": prep.fingerprint, "metrics": metrics, "parent_version": previous.version if previous else None,
              "codebook_version": codebook_version, "codebook_sizes": sizes, "split": prep.describe(),
              "train_stats": {k: stats[k] for k in ("steps", "resumed_from_step", "samples_per_s")}}

    def write(tmp: Path) -> dict[str, Any]:
        torch.save({"model": model.state_dict(), "model_config": config.model.to_dict(), "codebook_sizes": sizes,
                    "n_id_rows": prep.vocab.n_rows, "oov_buckets": prep.vocab.oov_buckets}, tmp / "model.pt")
        (tmp / "id_vocab.txt").write_text("\n".join(prep.vocab.item_ids) + "\n", encoding="utf-8")
        (tmp / "manifest.json").write_text(json.dumps({**record, "kind": RANKER}, indent=2, sort_keys=True, default=str))
        return record

    version = registry.register(RANKER, write)
    if config.promote:
        _promote_ranker(registry, version, codebook_version, metrics, gate, config.force_gate)
    shutil.rmtree(work, ignore_errors=True)
    ddp.barrier()
    log.info("ranker %s registered: all AUC %.4f, cold AUC %.4f (resumed from step %d)", version.version,
             metrics["all_auc"], metrics["cold_auc"], stats["resumed_from_step"])
    return version


def _gate(registry: Registry, live: ArtifactVersion | None, ds: Dataset, prep: Any, probs: np.ndarray,
          config: JobConfig) -> RankerGateResult:
    """The ranker gate on the held-out window: the candidate's scores against the live ranker's
    (with the codebook version it reads: the serving pair), when it can be scored."""
    live_probs, why = None, None
    if live is not None:
        try:  # the live ranker as it is served: on its own codebook version, or on the warm child it was let serve
            cb = registry.live(CODEBOOKS)
            reads = serving_codebooks(registry.events(RANKER), live.version, live.manifest.get("codebook_version"),
                                      cb.version if cb else None)
            live_probs = score_ranker(registry, live, ds, prep, config.train.device, config.train.data_path,
                                      config.text_encoding, reads)
        except Exception as exc:  # noqa: BLE001 - an unscorable live ranker is reported, the candidate still gated
            why = f"{type(exc).__name__}: {exc}"
            log.warning("ranker gate: the live ranker %s cannot be scored on this window (%s); gating on chance only",
                        live.version, why)
    g = config.ranker_gate
    result = gate_ranker(prep.test.users, prep.test.labels, probs, live_probs, live.version if live_probs is not None else None,
                         g.min_auc_lift, g.max_auc_drop, g.confidence, g.rounds, seed=config.train.seed)
    result.live_unscored = why
    return result


def score_ranker(registry: Registry, ranker: ArtifactVersion, ds: Dataset, prep: Any, device: Any = None,
                 data_path: Any = None, text: TextEncoding | None = None, codebook_version: str | None = None) -> np.ndarray:
    """A registered ranker's scores of `prep.test`, with its own ID vocabulary and the SIDs of
    the codebook version it was trained on, or of `codebook_version` (`text`: as in item_codes)."""
    model, vocab, manifest = load_ranker(ranker)
    cb_version = codebook_version or manifest.get("codebook_version")
    codes: dict[str, np.ndarray] = {}
    if cb_version is not None:
        codes, _ = item_codes(registry.get(CODEBOOKS, cb_version), ds, prep.catalog.tolist(), text)
    state = torch.load(ranker.path / "model.pt", map_location="cpu", weights_only=False)
    lookup = Lookup(IdVocab(vocab, state["oov_buckets"]).rows(prep.catalog.tolist()), codes)
    return predict(model, prep.test, lookup, device=device, data_path=data_path)


def _promote_ranker(registry: Registry, version: ArtifactVersion, codebook_version: str | None,
                    metrics: dict[str, Any], gate: RankerGateResult, force_gate: bool) -> None:
    """Make the ranker live when its codebooks are live and the gate passed (or is overridden)."""
    serving = registry.live(CODEBOOKS)
    aucs = {k: metrics[k] for k in ("all_auc", "cold_auc")}
    if codebook_version is not None and (serving is None or serving.version != codebook_version):
        # a ranker is only served with the codebook version it was trained on
        registry.log_event(RANKER, {"event": "refused", "version": version.version, "gate": gate.to_dict(),
                                    "reason": f"trained on codebooks {codebook_version}, live is "
                                              f"{serving.version if serving else None}"})
        log.warning("ranker %s registered, not promoted: its codebooks %s are not live", version.version, codebook_version)
        return
    if not gate.passed and not force_gate:
        registry.log_event(RANKER, {"event": "refused", "version": version.version, "gate": gate.to_dict(),
                                    "reason": "; ".join(gate.reasons), "metrics": aucs})
        for reason in gate.reasons:
            log.warning("ranker %s registered, refused by the ranker gate: %s", version.version, reason)
        return
    if not gate.passed:
        log.warning("ranker %s: ranker gate OVERRIDDEN with --force-gate: %s", version.version, "; ".join(gate.reasons))
    registry.promote(RANKER, version.version)
    registry.log_event(RANKER, {"event": "promoted", "version": version.version, "codebook_version": codebook_version,
                                "metrics": aucs, "gate": gate.to_dict(), "gate_overridden": not gate.passed})


def load_ranker(version: ArtifactVersion) -> tuple[torch.nn.Module, list[str], dict[str, Any]]:
    """A registered ranker: (model, ID vocabulary, manifest); the checkpoint alone suffices."""
    state = torch.load(version.path / "model.pt", map_location="cpu", weights_only=False)
    vocab = [v for v in (version.path / "id_vocab.txt").read_text(encoding="utf-8").split("\n") if v]
    model = build_model(ModelConfig.from_dict(state["model_config"]), IdVocab(vocab, state["oov_buckets"]).n_rows,
                        state["codebook_sizes"])
    model.load_state_dict(state["model"])
    return model, vocab, version.manifest


def judge_warm_child(config: JobConfig, child: ArtifactVersion) -> RankerGateResult | None:
    """May the live ranker serve `child` before it is retrained? Only when `child` is a warm refit
    (every modality) of the codebook version the ranker was trained on; then the ranker gate
    decides, on the held-out window, between the live ranker scored on the child's IDs (the
    candidate) and on its own version's (the live pair): the same intervals and bounds as a
    retrained candidate. The decision is a ranker event (`warm_child`) that `sidstream serve`
    reads (trainer.ranker_gate.serving_codebooks); None when there is nothing to decide."""
    registry = Registry(config.registry)
    ranker = registry.live(RANKER)
    trained_on = ranker.manifest.get("codebook_version") if ranker is not None else None
    if ranker is None or trained_on is None or child.manifest.get("parent_version") != trained_on:
        return None
    event = {"event": WARM_CHILD, "ranker": ranker.version, "codebook_version": child.version, "parent_version": trained_on}
    taken = {m: (v.get("refit") or {}).get("taken") for m, v in (child.manifest.get("metrics") or {}).items()}
    if not taken or any(t != "warm" for t in taken.values()):
        registry.log_event(RANKER, {**event, "passed": False, "reason": f"not a warm child: {taken}"})
        return None
    ds = load_source(config)
    prep = prepare(ds, holdout_fraction(ds.interactions["timestamp"].to_numpy(), config.ranker_gate.holdout_days,
                                        config.test_fraction), text=config.text_encoding)
    on = {v: score_ranker(registry, ranker, ds, prep, config.train.device, config.train.data_path, config.text_encoding, v)
          for v in (trained_on, child.version)}
    g = config.ranker_gate
    result = gate_ranker(prep.test.users, prep.test.labels, on[child.version], on[trained_on], trained_on,
                         g.min_auc_lift, g.max_auc_drop, g.confidence, g.rounds, seed=config.train.seed)
    registry.log_event(RANKER, {**event, "passed": result.passed, "gate": result.to_dict()})
    log.info("live ranker %s on the warm child %s: %s", ranker.version, child.version,
             "serves it until a retrained ranker passes the gate" if result.passed else "; ".join(result.reasons))
    return result


def train_all(config: JobConfig, on_progress: OnProgress | None = None) -> tuple[ArtifactVersion, ArtifactVersion | None]:
    """Codebooks, the live ranker judged on a warm child (judge_warm_child), then the ranker (it
    uses the codebooks just registered; they must be promoted)."""
    codebooks = train_codebooks(replace(config, promote=True), on_progress) if ddp.is_main() else None
    if codebooks is not None and config.codebook_version is None:
        judge_warm_child(config, codebooks)
    ddp.barrier()
    ranker = train_ranker(replace(config, codebook_version=codebooks.version if codebooks else None), on_progress)
    assert codebooks is not None or not ddp.is_main()
    return codebooks, ranker  # type: ignore[return-value]
