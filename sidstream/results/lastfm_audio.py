"""The paper's multimodal claim on real audio (docs/results/lastfm-audio.md).

Data: Last.fm-2k restricted to the 1,425 artists with audio embeddings (trainer.lastfm_audio):
text = MiniLM-L6 on "<name>. Tags: ...", audio = VGGish (headline) or Whisper (second column),
joint = l2(text) ⊕ l2(audio). Models: DIN; DIN + PSRQ SIDs of text, audio or joint; DIN + RQ-KMeans
on joint; DIN + the sum of the three codebooks' SID embeddings; MCCA and its ablations. Seed s =
ranker seed s and codebook seed s for every model (paired, as in sidstream.results.lastfm).

Tuned choice: the codebook size K (all three codebooks) is picked on a validation split cut from
the training period (its last 20 % of rows by time), by mean validation Cold AUC of DIN + joint
PSRQ and MCCA over `val_seeds`; the test split is never looked at for it. Everything else is fixed
beforehand (the text table's settings): alpha = 1, 3 layers, l2-normalised concatenation for the
joint embedding, embedding 64, 3 epochs at lr 1e-3, batch 512.

Runs go to their own pool (one torch and one faiss thread per process, as the Last.fm runs) and are
kept on disk by (run, code fingerprint, data fingerprint), so an interrupted regeneration resumes.
`budget_s` (env LASTFM_AUDIO_BUDGET_S) stops scheduling after that many seconds (0: run nothing,
render the kept runs); the table then renders the complete seeds it has and says so (verdict
`complete` = no).
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sidstream.results.stats import holm, interval, paired, verdict

log = logging.getLogger(__name__)

RUN_SOURCES = ("psrq/*.py", "trainer/codes.py", "trainer/dataset.py", "trainer/embeddings.py", "trainer/evaluate.py",
               "trainer/features.py", "trainer/lastfm_convert.py", "trainer/lastfm_audio.py", "trainer/metrics.py",
               "trainer/train_loop.py", "trainer/models/*.py", "sidcore/datasets/*.py", "encoders/text.py",
               )
# the kept runs' key: RUN_SOURCES and the run settings below (not this file, so that a rendering
# change keeps them); the table's code fingerprint covers this file too
SOURCES = (*RUN_SOURCES, "sidstream/results/lastfm_audio.py", "sidstream/results/stats.py")

EPOCHS, LR, BATCH = 3, 1e-3, 512
MODEL_BASE: dict[str, Any] = {}  # ModelConfig's defaults (embedding 64, activation unit 36, MLP 200-80)
ENCODERS = ("vggish", "whisper")  # the first is the headline
MODELS = (
    ("din", "DIN (IDs only)"),
    ("din+psrq", "DIN + text PSRQ"),
    ("din+psrq@m=audio", "DIN + audio PSRQ"),
    ("din+psrq@m=joint", "DIN + joint PSRQ (l2(text) ⊕ l2(audio))"),
    ("din+rq@m=joint", "DIN + joint RQ-KMeans"),
    ("din-sum+psrq", "DIN + text + audio + joint SIDs (sum, no cross attention)"),
    ("mcca", "MCCA (text, audio, joint; joint query)"),
    ("mcca-no-mjc", "MCCA without the joint codebook"),
    ("mcca-no-audio", "MCCA without the audio codebook"),
    ("mcca-no-text", "MCCA without the text codebook"),
)
TEXT_ONLY = ("din", "din+psrq")  # the same runs for every audio encoder (no audio input)
CLAIMS = (
    ("din+psrq@m=joint", "din+psrq", "joint codebook over text"),
    ("mcca", "din+psrq", "MCCA over text-only PSRQ (the paper's Table 3 claim)"),
    ("mcca", "din+psrq@m=joint", "MCCA over DIN + joint"),
    ("mcca", "din-sum+psrq", "cross attention over summed SIDs"),
    ("mcca", "mcca-no-mjc", "MCCA over its ablation without the joint codebook"),
    ("mcca", "mcca-no-audio", "MCCA over its ablation without audio"),
    ("mcca", "mcca-no-text", "MCCA over its ablation without text"),
    ("din+psrq@m=joint", "din+rq@m=joint", "PSRQ over RQ-KMeans on the joint codebook"),
)
VAL_MODELS = ("din+psrq@m=joint", "mcca")


@dataclass(frozen=True)
class Plan:
    seeds: int
    k_grid: tuple[int, ...]
    val_seeds: int
    encoders: tuple[str, ...] = ENCODERS


FULL = Plan(seeds=10, k_grid=(32, 64), val_seeds=2)


@dataclass(frozen=True, order=True)
class AudioRun:
    encoder: str  # "" for the text-only models (shared by every encoder)
    model: str
    seed: int
    k: int
    split: str = "test"  # "test" | "val" (the last 20 % of the training period)


def run_for(encoder: str, model: str, seed: int, k: int, split: str = "test") -> AudioRun:
    return AudioRun("" if model in TEXT_ONLY else encoder, model, seed, k, split)


# ------------------------------------------------------------------------------------ data
_PREPARED: dict[tuple[str, str], Any] = {}


def dataset(lastfm: str, audio: str, encoder: str) -> Any:
    from trainer.lastfm_audio import convert_lastfm_audio

    return convert_lastfm_audio(Path(lastfm), Path(audio), encoder or ENCODERS[0])


def prepared(lastfm: str, audio: str, encoder: str, split: str) -> Any:
    """The prepared audio subset (test split), or its training period re-split 80/20 (val)."""
    key = (encoder, split)
    if key not in _PREPARED:
        from trainer.dataset import Dataset
        from trainer.evaluate import prepare

        ds = dataset(lastfm, audio, encoder)
        prep = prepare(ds)
        if split == "val":
            inter = ds.interactions[ds.interactions["timestamp"] <= prep.cutoff_ms].reset_index(drop=True)
            prep = prepare(Dataset(inter, ds.items, ds.embeddings, ds.embedding_ids, ds.info))
        _PREPARED[key] = prep
    return _PREPARED[key]


def _execute(args: tuple[AudioRun, str, str, str | None]) -> tuple[AudioRun, dict[str, Any]]:
    run, lastfm, audio, cache = args
    from sidcore.config import CodebookSettings
    from trainer.evaluate import parse_spec, run_one
    from trainer.models import ModelConfig
    from trainer.train_loop import TrainConfig

    prep = prepared(lastfm, audio, run.encoder, run.split)
    codebook = CodebookSettings(method="psrq", codebook_size=run.k, layers=3, alpha=1.0)
    spec = parse_spec(run.model, ModelConfig(activation="dice", **MODEL_BASE), codebook, prep.modalities)
    started = time.perf_counter()
    out = run_one(prep, spec, run.seed, TrainConfig(epochs=EPOCHS, lr=LR, batch_size=BATCH), Path(cache) if cache else None,
                  codebook_seed=run.seed)
    out["wall_s"] = round(time.perf_counter() - started, 2)
    out["data_fingerprint"] = prep.fingerprint
    return run, out


def execute(runs: Iterable[AudioRun], lastfm: Path, audio: Path, jobs: int, cache_dir: Path, key: str,
            budget_s: float | None = None) -> dict[AudioRun, dict[str, Any]]:
    """Every run once, in the order given, `jobs` one-thread processes; kept on disk by `key`
    (code + data fingerprints). Stops scheduling after `budget_s` seconds (what finished is kept)."""
    from sidstream.results.runs import _init_worker

    wanted = list(dict.fromkeys(runs))
    store = cache_dir / "results-audio-runs"
    store.mkdir(parents=True, exist_ok=True)

    def path(r: AudioRun) -> Path:
        return store / (hashlib.sha256(json.dumps([asdict(r), key]).encode()).hexdigest()[:24] + ".json")

    done = {r: json.loads(path(r).read_text()) for r in wanted if path(r).is_file()}
    todo = [r for r in wanted if r not in done]
    log.info("lastfm-audio: %d runs, %d kept, %d to run with %d processes", len(wanted), len(done), len(todo), jobs)
    if not todo or (budget_s is not None and budget_s <= 0):  # a budget of 0: render what is kept
        return done
    started = time.perf_counter()
    tasks = [(r, str(lastfm), str(audio), str(cache_dir / "codes")) for r in todo]
    pool = multiprocessing.get_context("spawn").Pool(jobs, initializer=_init_worker) if jobs > 1 else None
    if pool is None:
        _init_worker()
    try:
        for i, (run, out) in enumerate(pool.imap(_execute, tasks) if pool else map(_execute, tasks), 1):
            done[run] = out
            tmp = path(run).with_suffix(".tmp")
            tmp.write_text(json.dumps(out, default=float))
            tmp.replace(path(run))
            elapsed = time.perf_counter() - started
            log.info("[%d/%d] %s %s %s seed %d K %d: cold AUC %.4f (%.0f s)", i, len(todo), run.split, run.encoder or "-",
                     run.model, run.seed, run.k, out["cold_auc"], out["wall_s"])
            if budget_s is not None and elapsed > budget_s:
                log.warning("lastfm-audio: time budget of %.0f s spent; %d runs left for a later regeneration",
                            budget_s, len(todo) - i)
                break
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    return done


# ---------------------------------------------------------------------------------- choice
def val_runs(plan: Plan, encoder: str) -> list[AudioRun]:
    return [run_for(encoder, m, s, k, "val") for k in plan.k_grid for s in range(plan.val_seeds) for m in VAL_MODELS]


def choose_k(results: dict[AudioRun, dict[str, Any]], plan: Plan, encoder: str) -> tuple[int, dict[int, float]]:
    """The K with the best mean validation Cold AUC (ties: the larger K)."""
    scores = {k: float(np.mean([results[run_for(encoder, m, s, k, "val")]["cold_auc"]
                                for s in range(plan.val_seeds) for m in VAL_MODELS])) for k in plan.k_grid}
    best = max(plan.k_grid, key=lambda k: (round(scores[k], 6), k))
    return best, scores


def test_runs(plan: Plan, encoder: str, k: int) -> list[AudioRun]:
    """Seed-major, so that a stopped regeneration leaves whole seeds."""
    return [run_for(encoder, m, s, k) for s in range(plan.seeds) for m, _ in MODELS]


# ------------------------------------------------------------------------------ rendering
def _vec(results: dict[AudioRun, dict[str, Any]], encoder: str, model: str, k: int, seeds: int,
         metric: str = "cold_auc") -> np.ndarray:
    return np.array([results[run_for(encoder, model, s, k)][metric] for s in range(seeds)])


def complete_seeds(results: dict[AudioRun, dict[str, Any]], plan: Plan, encoder: str, k: int) -> int:
    n = 0
    while n < plan.seeds and all(run_for(encoder, m, n, k) in results for m, _ in MODELS):
        n += 1
    return n


def _ci(v: np.ndarray) -> str:
    if len(v) == 0:
        return "—"
    mean, low, high = interval(v)
    return f"{mean:.4f} [{low:.4f}, {high:.4f}]"


def compare(results: dict[AudioRun, dict[str, Any]], encoder: str, k: int, seeds: int) -> tuple[list[str], dict[str, str]]:
    """Rows (Cold and All AUC, each with Holm over the claims) and verdicts `<a>_vs_<b>_{cold,all}`."""
    stats = {metric: [paired(_vec(results, encoder, a, k, seeds, metric), _vec(results, encoder, b, k, seeds, metric))
                      for a, b, _ in CLAIMS] for metric in ("cold_auc", "all_auc")}
    adjusted = {metric: holm([s["p"] for s in st]) for metric, st in stats.items()}
    rows = ["| claim | Cold AUC A − B [95 % CI] | wins / losses | p (Holm) | verdict (Cold) | All AUC A − B [95 % CI] | "
            "p (Holm) | verdict (All) |", "|---|---|---|---|---|---|---|---|"]
    verdicts = {}
    for i, (a, b, what) in enumerate(CLAIMS):
        cells = []
        for metric, tag in (("cold_auc", "cold"), ("all_auc", "all")):
            st, p_adj = stats[metric][i], adjusted[metric][i]
            v = verdict(st["mean_diff"], p_adj)
            verdicts[f"{a}_vs_{b}_{tag}"] = v
            diff = "identical" if st["identical"] else f"{st['mean_diff']:+.4f} [{st['ci_low']:+.4f}, {st['ci_high']:+.4f}]"
            cells.append((diff, f"{st['wins']} / {st['losses']}", f"{p_adj:.2g}", f"**{v}**"))
        (cd, cw, cp, cv), (ad, _aw, ap, av) = cells
        rows.append(f"| {what}: `{a}` vs `{b}` | {cd} | {cw} | {cp} | {cv} | {ad} | {ap} | {av} |")
    return rows, verdicts


def _sids(results: dict[AudioRun, dict[str, Any]], encoder: str, model: str, k: int, seeds: int) -> str:
    per: dict[str, list[int]] = {}
    for s in range(seeds):
        for m, n in results[run_for(encoder, model, s, k)]["distinct_sids"].items():
            per.setdefault(m, []).append(int(n))
    if not per:
        return "—"
    return ", ".join(f"{m} {min(v):,}–{max(v):,}" if min(v) != max(v) else f"{m} {v[0]:,}" for m, v in sorted(per.items()))


def analysis(lastfm: str, audio: str, encoder: str, k: int) -> dict[str, Any]:
    """Why: per-modality code purity (first layer vs the artist's top tag), how the joint codes
    follow each modality (NMI of first-layer codes), each half's share of the joint embedding's
    variance, and the cold test set's audio coverage. Codebook seed 0."""
    from sklearn.metrics import normalized_mutual_info_score as nmi

    from psrq.fitting import fit_codebook_set
    from sidcore.config import CodebookSettings
    from trainer.metrics import COLD_THRESHOLD, cold_mask

    prep = prepared(lastfm, audio, encoder, "test")
    ds = dataset(lastfm, audio, encoder)
    top = dict(zip(ds.items["item_id"], [t[0] if len(t) else "" for t in ds.items["tags"]], strict=True))
    labels = np.array([top.get(i, "") for i in prep.catalog])
    books = fit_codebook_set(prep.embeddings, CodebookSettings(method="psrq", codebook_size=k, layers=3, alpha=1.0, seed=0))
    first = {m: q.encode(prep.embeddings[m])[:, 0] for m, q in books.items()}

    def purity(codes: np.ndarray) -> float:
        total = 0
        for c in np.unique(codes):
            _, counts = np.unique(labels[codes == c], return_counts=True)
            total += int(counts.max())
        return total / len(codes)

    J = prep.embeddings["joint"]
    d_text = prep.embeddings["text"].shape[1]
    var = J.var(axis=0)
    cold = cold_mask(prep.catalog[prep.test.items], prep.catalog[prep.train.items], COLD_THRESHOLD)
    cold_items = np.unique(prep.test.items[cold])
    has_audio = ~np.isnan(prep.embeddings["audio"][cold_items]).any(axis=1)
    return {
        "purity": {m: round(purity(c), 3) for m, c in first.items()},
        "nmi_joint_text": round(float(nmi(first["joint"], first["text"])), 3),
        "nmi_joint_audio": round(float(nmi(first["joint"], first["audio"])), 3),
        "nmi_text_audio": round(float(nmi(first["text"], first["audio"])), 3),
        "text_variance_share": round(float(var[:d_text].sum() / var.sum()), 3),
        "cold_rows": int(cold.sum()), "cold_items": int(len(cold_items)), "cold_items_with_audio": int(has_audio.sum()),
        "items": int(len(prep.catalog)), "tags": int(len(set(labels))),
    }


def render(results: dict[AudioRun, dict[str, Any]], plan: Plan, chosen: dict[str, tuple[int, dict[int, float]]],
           notes: dict[str, dict[str, Any]]) -> tuple[str, dict[str, str]]:
    head = plan.encoders[0]
    seeds = {e: complete_seeds(results, plan, e, chosen[e][0]) for e in plan.encoders if e in chosen}
    if seeds.get(head, 0) < 2:
        raise RuntimeError(f"the headline encoder ({head}) has {seeds.get(head, 0)} complete seeds; need at least 2")
    any_run = results[run_for(head, "din", 0, chosen[head][0])]
    lines = [f"{any_run['n_test']:,} test rows, {any_run['n_cold']:,} of them cold (item with < 30 training rows); converted "
             f"data set fingerprint `{any_run['data_fingerprint']}`. Seed s = ranker seed s and codebook seed s for every model; "
             f"{EPOCHS} epochs, lr {LR:g}, batch {BATCH}; 3 layers, alpha = 1. Mean [95 % Student-t interval] over seeds.", "",
             "**K chosen on validation** (the training period's last 20 % of rows by time; mean validation Cold AUC of "
             f"{' and '.join(f'`{m}`' for m in VAL_MODELS)} over {plan.val_seeds} seeds; the test split is not used):", ""]
    for e, (k, scores) in chosen.items():
        lines.append(f"- {e}: " + ", ".join(f"K = {kk}: {v:.4f}" for kk, v in sorted(scores.items())) + f" → **K = {k}**")
    encs = [e for e in plan.encoders if e in chosen and seeds.get(e, 0) >= 2]
    lines += ["", "| model | " + " | ".join(f"{e}: All AUC | {e}: Cold AUC" for e in encs) + f" | distinct SIDs ({head}) |",
              "|---|" + "---|---|" * len(encs) + "---|"]
    for m, label in MODELS:
        cells = []
        for e in encs:
            k = chosen[e][0]
            cells += [_ci(_vec(results, e, m, k, seeds[e], "all_auc")), _ci(_vec(results, e, m, k, seeds[e]))]
        lines.append(f"| {label} (`{m}`) | " + " | ".join(cells) + f" | {_sids(results, head, m, chosen[head][0], seeds[head])} |")
    lines += ["", "Seeds per encoder: " + ", ".join(f"{e} {seeds.get(e, 0)} of {plan.seeds}" for e in plan.encoders) + "."]
    verdicts: dict[str, str] = {"complete": "yes" if all(seeds.get(e, 0) == plan.seeds for e in plan.encoders) else "no"}
    for e in encs:
        k = chosen[e][0]
        lines += ["", f"Cold AUC per seed, {e} (0, 1, ...):", ""]
        lines += [f"- `{m}`: " + " / ".join(f"{v:.3f}".lstrip("0") for v in _vec(results, e, m, k, seeds[e])) for m, _ in MODELS]
        rows, v = compare(results, e, k, seeds[e])
        lines += ["", f"Paired comparisons, {e} ({seeds[e]} seeds; Holm over the {len(CLAIMS)} claims, separately for Cold and "
                  "All AUC; verdict at p (Holm) < 0.05):", "", *rows]
        verdicts.update({(key if e == head else f"{e}.{key}"): val for key, val in v.items()})
    lines += ["", "Analysis (codebook seed 0, chosen K): first-layer tag purity per codebook (label = the artist's top tag), "
              "NMI between first-layer codes, the text half's share of the joint embedding's variance, and the audio "
              "coverage of the cold test items.", "",
              "| encoder | purity text / audio / joint | NMI joint–text | NMI joint–audio | NMI text–audio | text variance share "
              "in joint | cold test items with audio |", "|---|---|---|---|---|---|---|"]
    for e, a in notes.items():
        p = a["purity"]
        lines.append(f"| {e} | {p['text']:.3f} / {p['audio']:.3f} / {p['joint']:.3f} | {a['nmi_joint_text']:.3f} | "
                     f"{a['nmi_joint_audio']:.3f} | {a['nmi_text_audio']:.3f} | {a['text_variance_share']:.3f} | "
                     f"{a['cold_items_with_audio']} of {a['cold_items']} ({a['cold_rows']:,} rows) |")
    return "\n".join(lines), verdicts
