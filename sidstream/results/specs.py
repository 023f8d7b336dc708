"""Every generated table: what it depends on, what produces it, and the engine that writes and checks.

Three kinds of table:

- **Last.fm evaluation tables** (`sidstream.results.lastfm`): rankers trained over seeds; the
  runs of every selected table go to one pool (`sidstream.results.runs`).
- **In-process studies**: the quantizer study and the unique-ID table, on the same embeddings.
- **Machine tables** (pipeline, reliability, training throughput): `sidstream` commands run as
  subprocesses, their JSON lines kept verbatim. They measure this machine, record it, and are
  exempt from the code-staleness check (``machine_bound``).

``--quick`` runs the same generators on the trainer's synthetic data set (planted content groups),
smaller models and 3 seeds; of the machine tables it runs only the training throughput (`bench train
--quick`): the pipeline and reliability tables need a broker and minutes (the integration tests
cover those paths). It must write to another folder than docs/results.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sidstream.results import digest, lastfm, lastfm_audio
from sidstream.results.blocks import read_blocks, read_claims, write_block
from sidstream.results.fingerprint import commit, machine, source_fingerprint, tree_fingerprint
from sidstream.results.runs import DataSource, Run, execute

log = logging.getLogger(__name__)

SCHEMA = 1


@dataclass
class Context:
    root: Path  # the checkout (sources are fingerprinted here)
    out: Path  # where the Markdown files go (docs/results, or a scratch folder with --quick)
    quick: bool
    jobs: int
    cache_dir: Path
    lastfm_dir: Path | None
    command: str
    runs: dict[Run, dict[str, Any]] = field(default_factory=dict)

    @functools.cached_property
    def lastfm_fingerprint(self) -> str:
        """The Last.fm folder's files, hashed once per regeneration (every Last.fm table records it)."""
        if self.lastfm_dir is None:
            raise FileNotFoundError("the Last.fm tables need the Last.fm-2k folder (--lastfm or SIDSTREAM_LASTFM_DIR)")
        return tree_fingerprint(self.lastfm_dir)

    @property
    def source(self) -> DataSource:
        if self.quick:
            return DataSource("synthetic")
        return DataSource("lastfm", str(self.lastfm_dir) if self.lastfm_dir else None)


@dataclass(frozen=True)
class Rendered:
    markdown: str
    verdicts: dict[str, str]
    data: dict[str, Any]


@dataclass(frozen=True)
class TableSpec:
    name: str
    doc: str  # file name under docs/results
    title: str
    sources: tuple[str, ...]
    produce: Callable[[Context], Rendered]
    plan: Callable[[Context], list[Run]] | None = None  # evaluation runs it needs (pooled)
    machine_bound: bool = False
    in_quick: bool = True
    settings: Callable[[], str] = lambda: ""  # settings it depends on, as text
    probes: tuple[str, ...] = ()  # behaviour probes (sidstream.results.digest) that vouch for its sources
    strict: tuple[str, ...] = ()  # sources the probes do not see (rendering, statistics): must stay byte-equal

    def code_fingerprint(self, root: Path) -> str:
        return source_fingerprint(root, self.sources, self.settings())[0]

    def strict_fingerprint(self, root: Path) -> str:
        return source_fingerprint(root, self.strict)[0] if self.strict else ""


def _codebook_defaults() -> str:
    from sidcore.config import CodebookSettings

    return json.dumps(CodebookSettings().model_dump(mode="json"), sort_keys=True)


def _lastfm_data(ctx: Context) -> dict[str, Any]:
    if ctx.quick:
        return {"data": "trainer.synthetic (quick)"}
    return {"data": "lastfm-2k", "data_fingerprint": ctx.lastfm_fingerprint}


# ------------------------------------------------------------------------------ Last.fm eval
# what the behaviour digest's probes do not see (tables and statistics from the runs): byte-equal or stale
LASTFM_RENDER_SOURCES = ("sidstream/results/lastfm.py", "sidstream/results/stats.py", "sidstream/results/runs.py")


def _eval_table(name: str) -> TableSpec:
    plan_fn, render_fn, title = lastfm.TABLES[name]

    def plan(ctx: Context) -> list[Run]:
        return plan_fn(lastfm.QUICK if ctx.quick else lastfm.FULL)

    def produce(ctx: Context) -> Rendered:
        p = lastfm.QUICK if ctx.quick else lastfm.FULL
        markdown, verdicts = render_fn({r: ctx.runs[r] for r in plan_fn(p)}, p)
        if name == "lastfm-headline":
            lastfm.plot_headline(ctx.runs, p, ctx.out / "img" / "lastfm_headline.png")
            markdown += "\n\n![Cold and All AUC per model, 95 % intervals and seeds](img/lastfm_headline.png)"
        data = _lastfm_data(ctx)
        fp = {ctx.runs[r]["data_fingerprint"] for r in plan_fn(p)}
        data["dataset_fingerprint"] = ",".join(sorted(fp))
        return Rendered(markdown, verdicts, data)

    return TableSpec(name, "lastfm.md", title, lastfm.SOURCES, produce, plan, settings=_codebook_defaults,
                     probes=("settings", "quantizers", "evaluation", "lastfm_convert"), strict=LASTFM_RENDER_SOURCES)


# ----------------------------------------------------------------------- Last.fm with audio
def _lastfm_audio_dir() -> Path:
    from sidcore.config import get_settings
    from trainer.lastfm_audio import resolve_audio_dir

    return resolve_audio_dir(None, get_settings().lastfm_audio_source)


def _lastfm_audio(ctx: Context) -> Rendered:
    """The multimodal table: K chosen on validation per encoder, then the paired test runs
    (sidstream.results.lastfm_audio); LASTFM_AUDIO_BUDGET_S bounds the seconds spent on runs."""
    la = lastfm_audio
    if ctx.lastfm_dir is None:
        raise FileNotFoundError("the lastfm-audio table needs the Last.fm-2k folder (--lastfm or SIDSTREAM_LASTFM_DIR)")
    audio = _lastfm_audio_dir()
    plan = la.FULL
    audio_fp = tree_fingerprint(audio)
    settings = json.dumps([_codebook_defaults(), la.EPOCHS, la.LR, la.BATCH, la.MODEL_BASE], sort_keys=True)
    key = "/".join((source_fingerprint(ctx.root, la.RUN_SOURCES, settings)[0], ctx.lastfm_fingerprint, audio_fp))
    budget = float(os.environ["LASTFM_AUDIO_BUDGET_S"]) if os.environ.get("LASTFM_AUDIO_BUDGET_S") else None
    deadline = None if budget is None else time.perf_counter() + budget
    results: dict[Any, dict[str, Any]] = {}
    chosen: dict[str, tuple[int, dict[int, float]]] = {}

    def left() -> float | None:
        return None if deadline is None else max(0.0, deadline - time.perf_counter())

    for enc in plan.encoders:
        val = la.val_runs(plan, enc)
        results.update(la.execute(val, ctx.lastfm_dir, audio, ctx.jobs, ctx.cache_dir, key, left()))
        if not all(r in results for r in val):
            break
        chosen[enc] = la.choose_k(results, plan, enc)
        results.update(la.execute(la.test_runs(plan, enc, chosen[enc][0]), ctx.lastfm_dir, audio, ctx.jobs,
                                  ctx.cache_dir, key, left()))
    notes = {e: la.analysis(str(ctx.lastfm_dir), str(audio), e, k) for e, (k, _) in chosen.items()}
    markdown, verdicts = la.render(results, plan, chosen, notes)
    fps = {r["data_fingerprint"] for r in results.values()}
    return Rendered(markdown, verdicts, {"data": "lastfm-2k+audio", "data_fingerprint": ctx.lastfm_fingerprint,
                                         "audio_fingerprint": audio_fp, "dataset_fingerprint": ",".join(sorted(fps))})


# -------------------------------------------------------------------------------- quantizers
def _quantizers(ctx: Context) -> Rendered:
    from sidstream.results import quantizers

    if ctx.quick:
        X, labels = quantizers.synthetic_items()
        k, line, data = 8, "Data: planted Gaussian groups (label = group), `--quick`.", {"data": "synthetic groups (quick)"}
    else:
        from sidstream.bench.ids import lastfm_items

        _, X, labels = lastfm_items(ctx.lastfm_dir)
        k, data = 64, _lastfm_data(ctx)
        line = ('Data: the 12,133 tagged Last.fm-2k artists, text `"<name>. Tags: <top 5 tags>"` through the shipped '
                "MiniLM-L6 (384-d, L2); label = the artist's top tag.")
    res = quantizers.run(X, labels, ctx.out / "img", k, 3)
    runs = res["runs"]

    def purity(name: str, layer: int) -> float:
        return float(runs[name]["layers"][layer]["purity"])

    def distinct(name: str) -> int:
        return int(runs[name]["sids"]["distinct_sids"])

    def cmp(a: float, b: float) -> str:  # deterministic single-seed measurements: a plain order
        return "higher" if a > b else "lower" if a < b else "equal"

    psrq, rq, anchor = "PSRQ alpha=1 (paper)", "RQ-KMeans", "PSRQ anchor=input alpha=1"
    verdicts = {
        "psrq_deep_purity_vs_rq": cmp(purity(psrq, 1) + purity(psrq, 2), purity(rq, 1) + purity(rq, 2)),
        "psrq_distinct_vs_rq": cmp(distinct(psrq), distinct(rq)),
        "psrq_recon_vs_rq": cmp(runs[psrq]["layers"][-1]["recon_cos"], runs[rq]["layers"][-1]["recon_cos"]),
        "anchor_distinct_vs_psrq": cmp(distinct(anchor), distinct(psrq)),
        "anchor_deep_purity_vs_psrq": cmp(purity(anchor, 1) + purity(anchor, 2), purity(psrq, 1) + purity(psrq, 2)),
        "alpha0_equals_rq": "equal" if distinct("PSRQ alpha=0") == distinct(rq) and purity("PSRQ alpha=0", 2) == purity(rq, 2) else "different",
    }
    md = quantizers.markdown(res, line) + "\n\nVerdicts (single seed, deterministic order of two measurements): " + ", ".join(
        f"`{k}` {v}" for k, v in verdicts.items())
    return Rendered(md, verdicts, data)


# ---------------------------------------------------------------------------------------- ids
def _ids(ctx: Context) -> Rendered:
    from sidstream.bench.ids import run_ids, table

    if ctx.quick:
        from sidstream.results import quantizers

        X, labels = quantizers.synthetic_items()
        out, data = run_ids(None, 8, 3, 0, 200, 0, 1, items=(None, X, labels)), {"data": "synthetic groups (quick)"}
    else:
        out, data = run_ids(ctx.lastfm_dir, 64, 3, 0, 1000, 0, 3), _lastfm_data(ctx)
    rows = {r["quantizer"]: r for r in out["rows"]}
    verdicts = {
        "psrq_id_unique": "yes" if rows["psrq_id"]["distinct_ratio"] == 1.0 else "no",
        "psrq_id_purity_equals_psrq": "equal" if rows["psrq_id"]["purity"] == rows["psrq"]["purity"] else "different",
        "psrq_id_recon_vs_tiger": "higher" if rows["psrq_id"]["recon_cos_full_id"] > rows["tiger"]["recon_cos_full_id"] else "not higher",
        "psrq_id_unique_after_refit": "yes" if out["refit"]["unique_after_refit"] else "no",
    }
    md = (f"{out['items']:,} items, K = {out['K']}, {out['semantic_layers']} semantic layers, seed {out['seed']}, identity "
          f"codebook {out['identity_size']}. Timing columns are this machine's; Cold AUC per quantizer is in lastfm.md "
          "(`din+psrq_id` there).\n\n" + table(out) + "\n\nVerdicts: " + ", ".join(f"`{k}` {v}" for k, v in verdicts.items()))
    return Rendered(md, verdicts, data)


# -------------------------------------------------------------------------------------- refit
REFIT_SOURCES = ("sidstream/results/refit.py", "sidstream/bench/refit.py", "sidstream/bench/refit_auc.py",
                 "sidstream/bench/ids.py", "psrq/*.py", "streams/identity.py", "trainer/*.py", "sidcore/datasets/*.py",
                 "encoders/text.py")


def _refit(ctx: Context) -> Rendered:
    from sidstream.results import quantizers, refit

    if ctx.quick:
        X, _ = quantizers.synthetic_items()
        out = refit.run(X, refit.QUICK)
        line, data = "Data: planted Gaussian groups, `--quick` (no rankers).", {"data": "synthetic groups (quick)"}
    else:
        from sidstream.bench.ids import lastfm_items

        _, X, _ = lastfm_items(ctx.lastfm_dir)
        out = refit.run(X, refit.FULL, ctx.lastfm_dir)
        line, data = "Data: the Last.fm-2k artists' text embeddings (MiniLM-L6, L2), as in ids.md.", _lastfm_data(ctx)
    md, verdicts = refit.markdown(out, line)
    return Rendered(md, verdicts, data)


# ---------------------------------------------------------------------------- machine tables
def _run_commands(ctx: Context, commands: list[str], env: dict[str, str] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """Each `sidstream ...` command line with the running interpreter; its last JSON line.

    The commands run with their own home (registry, Feast store, run folders) under the results
    cache and their own broker (`RESULTS_KAFKA`), so that what a user has made LIVE in
    ~/.sidstream (a text-only codebook, say) or a broker another home started does not change the
    figures (the kill-broker drill needs a broker its home owns). On the first regeneration the
    demo fits that home's first codebook."""
    env = {**_results_env(ctx), **(env or {})}
    out = []
    for line in commands:
        argv = [sys.executable, "-m", "sidstream.cli", *shlex.split(line)[1:]]
        log.info("running %s", line)
        started = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, text=True, cwd=ctx.root, env={**os.environ, **env})
        if proc.returncode != 0:
            raise RuntimeError(f"{line} failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
        last = next((ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith("{")), None)
        if last is None:
            raise RuntimeError(f"{line} printed no JSON line; stdout ends: {proc.stdout[-500:]}")
        result = json.loads(last)
        result.setdefault("wall_s", round(time.perf_counter() - started, 1))
        out.append((line, result))
    return out


RESULTS_KAFKA = {"SIDSTREAM_KAFKA__PORT": "19192", "SIDSTREAM_KAFKA__CONTROLLER_PORT": "19193"}


def _results_env(ctx: Context) -> dict[str, str]:
    return {"SIDSTREAM_HOME": str(ctx.cache_dir / "home"), **RESULTS_KAFKA}


def _stop_results_broker(ctx: Context, env: dict[str, str] | None = None) -> None:
    """Stop the broker the machine tables' commands started (their home owns it); `env`: that of
    the commands that started it, when not the default one."""
    proc = subprocess.run([sys.executable, "-m", "sidstream.cli", "broker", "stop"], capture_output=True, text=True,
                          cwd=ctx.root, env={**os.environ, **_results_env(ctx), **(env or {})})
    if proc.returncode != 0:
        log.warning("could not stop the results broker: %s", proc.stderr.strip()[-500:])


def _verbatim(results: list[tuple[str, dict[str, Any]]]) -> list[str]:
    lines: list[str] = []
    for cmd, res in results:
        lines += [f"`{cmd}`", "", "```", json.dumps(res), "```", ""]
    return lines


def _fmt_stages(stages: dict[str, Any]) -> str:
    parts = [f"{k} {v['p50']:.0f} / {v['p99']:.0f}" for k, v in stages.items() if isinstance(v, dict) and "p50" in v]
    return "; ".join(parts) or "—"


def _fmt_warmup(warmup: dict[str, Any] | None) -> str:
    """The tracks a bench sent through fresh workers before the measured ones (not in its figures)."""
    if not warmup or not warmup.get("latency_ms"):
        return "none"
    lat = warmup["latency_ms"]
    return f"{warmup['tracks']} tracks: {lat['p50']:.0f} / {lat['p99']:.0f}"


PIPELINE_COMMANDS = ["sidstream demo --json", "sidstream bench pipeline --tracks 2000 --poll-ms 10 --json",
                     # the paced goals are read with a poll of <= 10 ms: reads every 8 ms at a fixed rate,
                     # never stretched by the duty cap; the line's `polls` gives the mean interval
                     "sidstream bench pipeline --rate 50 --tracks 1500 --poll-ms 8 --poll-max-duty 1 --json"]


def _pipeline(ctx: Context) -> Rendered:
    results = _run_commands(ctx, PIPELINE_COMMANDS)
    demo = results[0][1]
    lines = [f"Demo: {demo.get('tracks')} tracks, {demo.get('assigned')} assigned, {demo.get('dlq')} dead-lettered, "
             f"{demo.get('feast_read')} read back from Feast; latency p50 / p99 {demo['latency_ms']['p50']:.0f} / "
             f"{demo['latency_ms']['p99']:.0f} ms (one burst: mostly queueing).", "",
             "| run | encoder alone texts/s | pipeline tracks/s | ratio | produce → readable p50 / p99 ms | stages p50 / p99 ms | "
             "fresh workers' warm-up tracks: p50 / p99 ms | largest worker RSS MB |",
             "|---|---|---|---|---|---|---|---|"]
    for cmd, r in results[1:]:
        lines.append(f"| `{cmd.removeprefix('sidstream ')}` | {r['encoder_texts_per_s']} | {r['pipeline_tracks_per_s']} | "
                     f"{r['ratio_pipeline_to_encoder']} | {r['latency_ms']['p50']:.1f} / {r['latency_ms']['p99']:.1f} | "
                     f"{_fmt_stages(r.get('stages_ms', {}))} | {_fmt_warmup(r.get('warmup'))} | {r['peak_rss_mb']['largest_worker']} |")
    paced = results[2][1]
    verdicts = {  # the speed issue's goals for the paced stream on this machine
        "paced_p50_under_100ms": "yes" if paced["latency_ms"]["p50"] < 100 else "no",
        "paced_p99_under_300ms": "yes" if paced["latency_ms"]["p99"] < 300 else "no",
        "paced_poll_every_10ms_or_less": "yes" if paced.get("polls", {}).get("mean_interval_ms", 1e9) <= 10 else "no",
        "demo_all_readable": "yes" if demo.get("feast_read") == demo.get("tracks") else "no",
    }
    lines += ["", "Verdicts: " + ", ".join(f"`{k}` {v}" for k, v in verdicts.items()) + "."]
    return Rendered("\n".join([*lines, "", "JSON lines:", "", *_verbatim(results)]), verdicts,
                    {"data": "Last.fm-2k artists + shipped audio"})


RELIABILITY_COMMANDS = [*(f"sidstream chaos --fault {f} --json" for f in
                          ("kill-encoder", "kill-assigner", "kill-writer", "kill-broker", "feast-down")),
                        "sidstream chaos --fault slow-encoder --tracks 1500 --rate 60 --fault-at 0 --json",
                        "sidstream bench soak --tracks 20000 --rate 80 --wait 30 --json",
                        "sidstream bench backfill --tracks 20000 --json"]


def _reliability(ctx: Context) -> Rendered:
    results = _run_commands(ctx, RELIABILITY_COMMANDS)
    lines = ["| drill | produced | in Feast | lost | DLQ | duplicated final | mismatched | shared IDs | recovery s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for _cmd, r in results:
        if "fault" in r:
            lines.append(f"| {r['fault']} | {r['produced']} | {r['in_feast']} | {r['lost']} | {r['dlq']} | {r['duplicated_final']} | "
                         f"{r['mismatched']} | {r.get('shared_ids', '—')} | {r['recovery_s']} |")
    verdicts = {"nothing_lost": "yes" if all(r.get("lost", 0) == 0 and r.get("duplicated_final", 0) == 0
                                              for _c, r in results) else "no"}
    soak = next((r for _c, r in results if r.get("bench") == "soak"), None)
    if soak is not None:  # the soak's goals: RSS last / first quarter <= 1.1, join table within its bound
        verdicts["soak_rss_ratio_within_1.1"] = "yes" if all(
            v["ratio"] <= 1.1 for k, v in soak.items() if k.endswith("_rss_mb") and isinstance(v, dict)) else "no"
        verdicts["soak_join_table_within_bound"] = "yes" if soak.get("join_table", {}).get("within_bound") else "no"
    return Rendered("\n".join([*lines, "", "Verdicts: " + ", ".join(f"`{k}` {v}" for k, v in verdicts.items()) + ".", "",
                               "JSON lines:", "",
                               *_verbatim(results)]), verdicts, {"data": "Last.fm-2k artists (chaos), generated tracks (soak, backfill)"})


# the cluster drills: three brokers of their own (ports 19292.., so the one-node results broker
# on 19192 can run beside them), replication 3 / 2 in sync, the faults a cluster adds and the six
# faults of the reliability table again
CLUSTER_KAFKA = {"SIDSTREAM_KAFKA__PORT": "19292", "SIDSTREAM_KAFKA__CONTROLLER_PORT": "19293",
                 "SIDSTREAM_KAFKA__BROKERS": "3", "SIDSTREAM_KAFKA__HEAP": "384m"}
CLUSTER_COMMANDS = ["sidstream chaos --brokers 3 --fault kill-leader --json",
                    "sidstream chaos --brokers 3 --fault stop-broker --json",
                    "sidstream chaos --brokers 3 --replicas text=2,assigner=2,writer=2 --fault kill-replica --json",
                    "sidstream chaos --brokers 3 --replicas assigner=2 --fault stop-replica --json",
                    "sidstream chaos --brokers 3 --fault redis-primary-down --json",
                    *(f"sidstream chaos --brokers 3 --fault {f} --json" for f in
                      ("kill-encoder", "kill-assigner", "kill-writer", "kill-broker", "feast-down")),
                    "sidstream chaos --brokers 3 --fault slow-encoder --tracks 1500 --rate 60 --fault-at 0 --json"]


def _cluster(ctx: Context) -> Rendered:
    try:
        results = _run_commands(ctx, CLUSTER_COMMANDS, env=CLUSTER_KAFKA)
    finally:
        _stop_results_broker(ctx, CLUSTER_KAFKA)
    lines = ["| drill | brokers | replication / in sync | replicas | in flight | lost | DLQ / bad | duplicated final | "
             "mismatched | shared IDs | recovery s | max gap s |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for _cmd, r in results:
        reps = ",".join(f"{k}={v}" for k, v in r["replicas"].items() if v > 1) or "1 each"
        lines.append(f"| {r['fault']} | {r['brokers']} | {r['replication_factor']} / {r['min_insync_replicas']} | {reps} | "
                     f"{r['in_flight_at_fault']} | {r['lost']} | {r['dlq']} / {r['bad_injected']} | {r['duplicated_final']} | "
                     f"{r['mismatched']} | {r['shared_ids']} | {r['recovery_s']} | {r['max_gap_s']} |")
    clean = all(r["lost"] == 0 and r["duplicated_final"] == 0 and r["duplicate_offline_rows"] == 0 and not r["mismatched"]
                and r["shared_ids"] == 0 and r["dlq"] == r["bad_injected"] for _c, r in results)
    leader = [r for _c, r in results if r["fault"] in ("kill-leader", "stop-broker")]
    verdicts = {"nothing_lost_on_the_cluster": "yes" if clean else "no",
                "leader_faults_gap_within_10s": "yes" if leader and all(r["max_gap_s"] <= 10.0 for r in leader) else "no"}
    return Rendered("\n".join([*lines, "", "Verdicts: " + ", ".join(f"`{k}` {v}" for k, v in verdicts.items()) + ".", "",
                               "JSON lines:", "", *_verbatim(results)]), verdicts,
                    {"data": "Last.fm-2k artists (chaos) on a local three-broker KRaft cluster"})


SCALE_COMMANDS = ["sidstream bench scale --claims 100000,1000000 --kept 1000000 --buckets 10000,100000 --json",
                  "sidstream bench backfill --tracks 20000 --shards 1,2 --json"]


def _scale(ctx: Context) -> Rendered:
    results = _run_commands(ctx, SCALE_COMMANDS)
    scale = next(r for _c, r in results if r.get("bench") == "scale")
    backfill = next(r for _c, r in results if r.get("bench") == "backfill")
    lines = ["| identity claims | first catch-up s | claims/s | RSS over baseline MB | restart s | claims read at restart | "
             "restart RSS MB | in-memory store s / MB |", "|---|---|---|---|---|---|---|---|"]
    for row in scale["claims"]:
        f, r, m = row["first_catch_up"], row["restart"], row["in_memory_store"]
        lines.append(f"| {row['claims']:,} (largest bucket {row['largest_bucket']:,}) | {f['seconds']} | {f['claims_per_s']:,} | "
                     f"{f['rss_over_baseline_mb']} | {r['seconds']} | {r['claims_read']} | {r['rss_over_baseline_mb']} | "
                     f"{m['seconds']} / {m['rss_over_baseline_mb']} |")
    kept = scale.get("kept_restore")
    if kept:
        lines += ["", f"Kept embeddings: {kept['records']:,} restored in {kept['seconds']} s ({kept['records_per_s']:,} records/s, "
                      f"+{kept['rss_over_baseline_mb']} MB)."]
    lines += ["", "| bucket | K_id | us per assignment (best-first) | rows visited | us (exhaustive) | same codes |", "|---|---|---|---|---|---|"]
    for s in scale["identity_search"]:
        lines.append(f"| {s['bucket']:,} | {s['k_id']} | {s['us_per_track']} | {s['rows_visited_per_track']} | "
                     f"{s.get('exhaustive_us_per_track', '—')} | {s.get('same_codes_as_exhaustive', '—')} |")
    lines += ["", "| backfill shards | tracks/s | per shard | vs one shard |", "|---|---|---|---|"]
    for k, row in backfill["by_shards"].items():
        lines.append(f"| {k} | {row['tracks_per_s']} | {', '.join(str(x) for x in row['per_shard_tracks_per_s']) or '—'} | "
                     f"{row['vs_fewest_shards']} |")
    restarts = [row["restart"] for row in scale["claims"]]
    verdicts = {
        "restart_reads_no_history": "yes" if all(r["claims_read"] == 0 for r in restarts) else "no",
        "restart_under_10s": "yes" if all(r["seconds"] < 10 for r in restarts) else "no",
        "catch_up_rss_under_500mb": "yes" if all(row["first_catch_up"]["rss_over_baseline_mb"] < 500 for row in scale["claims"]) else "no",
        "search_equals_exhaustive": "yes" if all(s.get("same_codes_as_exhaustive", True) for s in scale["identity_search"]) else "no",
        "two_shards_at_least_1.7x": "yes" if backfill["by_shards"].get("2", {}).get("vs_fewest_shards", 0) >= 1.7 else "no",
    }
    return Rendered("\n".join([*lines, "", "Verdicts: " + ", ".join(f"`{k}` {v}" for k, v in verdicts.items()) + ".", "",
                               "JSON lines:", "", *_verbatim(results)]), verdicts, {"data": "generated claims, kept embeddings and catalogue"})


SERVING_COMMANDS = ["sidstream bench online --store redis --json"]


def _serving(ctx: Context) -> Rendered:
    """`sidstream serve` under hey at fixed rates against the raw Feast read (issue 34's goals)."""
    from sidstream.bench.online import render

    results = _run_commands(ctx, SERVING_COMMANDS)
    r = results[0][1]
    g = r["goals"]
    verdicts = {
        "rank_p99_at_500_le_5ms": "yes" if g["rank_p99_at_500_le_5ms"]["met"] else "no",
        "rank_max_sustained_ge_1000": "yes" if g["rank_max_sustained_ge_1000"]["met"] else "no",
        "features_100_p99_le_raw_plus_1ms_at_100": "yes" if 100 in g["features_100_p99_le_raw_plus_1ms"]["met_at_rates"] else "no",
    }
    return Rendered("\n".join([render(r), "", "Verdicts: " + ", ".join(f"`{k}` {v}" for k, v in verdicts.items()) + ".", "",
                               "JSON lines:", "", *_verbatim(results)]), verdicts,
                    {"data": "synthetic catalogue (400 + 50 cold tracks, 200 users), MCCA ranker"})


def _throughput(ctx: Context) -> Rendered:
    results = _run_commands(ctx, ["sidstream bench train --quick --json" if ctx.quick else "sidstream bench train --json"])
    r = results[0][1]
    cpu = r["cpu"]
    lines = ["| model | samples/s | parameters |", "|---|---|---|"]
    lines += [f"| {m} | {v['samples_per_s']:,.0f} | {v['parameters']:,} |" for m, v in cpu.items()]
    lines += ["", f"MCCA / DIN: {r['cpu_ratio_mcca_over_din']}; peak RSS {r['peak_rss_mb']} MB; CUDA half: "
              f"{r.get('cuda_amp_bf16', {}).get('skipped', 'measured (JSON below)')}.", "", *_verbatim(results)]
    return Rendered("\n".join(lines), {}, {"data": "synthetic Last.fm-sized batches"})


MACHINE_SOURCES = ("sidstream/results/specs.py",)

TABLES: dict[str, TableSpec] = {spec.name: spec for spec in (
    *(_eval_table(name) for name in lastfm.TABLES),
    TableSpec("lastfm-audio", "lastfm-audio.md", "Last.fm-2k with audio: the paper's multimodal claim",
              lastfm_audio.SOURCES, _lastfm_audio, settings=_codebook_defaults, in_quick=False,
              probes=("settings", "quantizers", "evaluation", "evaluation_multimodal", "lastfm_convert"),
              strict=("sidstream/results/lastfm_audio.py", "sidstream/results/stats.py", "trainer/lastfm_audio.py")),
    TableSpec("lastfm-throughput", "lastfm.md", "Training throughput", MACHINE_SOURCES, _throughput, machine_bound=True),
    TableSpec("quantizers", "quantizers.md", "Quantizers on Last.fm-2k", ("sidstream/results/quantizers.py", "psrq/*.py",
              "trainer/lastfm_convert.py", "trainer/embeddings.py", "sidcore/datasets/*.py", "encoders/text.py"), _quantizers,
              settings=_codebook_defaults, probes=("settings", "quantizers", "lastfm_convert"),
              strict=("sidstream/results/quantizers.py",)),
    TableSpec("ids", "ids.md", "Unique IDs", ("sidstream/bench/ids.py", "psrq/*.py", "streams/identity.py",
              "trainer/lastfm_convert.py", "trainer/embeddings.py", "sidcore/datasets/*.py", "encoders/text.py"), _ids,
              settings=_codebook_defaults, probes=("settings", "quantizers", "ids", "lastfm_convert"),
              strict=("sidstream/bench/ids.py",)),
    TableSpec("refit", "refit.md", "IDs that survive a refit", REFIT_SOURCES, _refit, settings=_codebook_defaults,
              probes=("settings", "quantizers", "evaluation", "lastfm_convert", "refit"),
              strict=("sidstream/results/refit.py", "sidstream/results/stats.py")),
    TableSpec("pipeline", "pipeline.md", "Pipeline", MACHINE_SOURCES, _pipeline, machine_bound=True, in_quick=False),
    TableSpec("reliability", "reliability.md", "Reliability", MACHINE_SOURCES, _reliability, machine_bound=True, in_quick=False),
    TableSpec("cluster", "reliability.md", "Reliability on a cluster", MACHINE_SOURCES, _cluster, machine_bound=True,
              in_quick=False),
    TableSpec("scale", "scale.md", "State at scale", MACHINE_SOURCES, _scale, machine_bound=True, in_quick=False),
    TableSpec("serving", "serving.md", "Serving at fixed request rates", MACHINE_SOURCES, _serving, machine_bound=True,
              in_quick=False),
)}


# ----------------------------------------------------------------------------------- engine
def select(only: tuple[str, ...], quick: bool) -> list[TableSpec]:
    unknown = [n for n in only if n not in TABLES]
    if unknown:
        raise KeyError(f"unknown table(s) {unknown}; known: {', '.join(TABLES)}")
    chosen = [TABLES[n] for n in only] if only else list(TABLES.values())
    return [t for t in chosen if t.in_quick or not quick]


def regenerate(ctx: Context, tables: list[TableSpec], progress: Callable[[str], None] = log.info) -> dict[str, float]:
    """Run what the tables need (evaluation runs pooled first), then write each block; seconds per table."""
    eval_tables = [t for t in tables if t.plan is not None]
    timings: dict[str, float] = {}
    if eval_tables:
        started = time.perf_counter()
        runs = [r for t in eval_tables for r in t.plan(ctx)]  # type: ignore[misc]
        fp = source_fingerprint(ctx.root, lastfm.RUN_SOURCES, _codebook_defaults())[0]
        ctx.runs = execute(runs, ctx.source, ctx.jobs, ctx.cache_dir, fp)
        timings["evaluation runs"] = round(time.perf_counter() - started, 1)
    failed: dict[str, str] = {}
    for t in tables:
        started = time.perf_counter()
        progress(f"generating {t.name}")
        try:
            rendered = t.produce(ctx)
        except Exception as exc:  # one table's failure must not cost the others: report all at the end
            log.exception("table %s failed", t.name)
            failed[t.name] = f"{type(exc).__name__}: {exc}"[:600]
            continue
        meta = {"schema": SCHEMA, "table": t.name, "code_fingerprint": t.code_fingerprint(ctx.root),
                "machine_bound": t.machine_bound, "commit": commit(ctx.root), "command": ctx.command,
                "generated": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
                "quick": ctx.quick, "verdicts": rendered.verdicts, **rendered.data}
        header = (f"*Generated by `{ctx.command}` (table `{t.name}`) on {meta['generated']}, commit {meta['commit']}; "
                  f"machine: {meta['machine']}; code fingerprint `{meta['code_fingerprint']}`"
                  + (f"; data fingerprint `{meta['data_fingerprint']}` (the Last.fm-2k folder's files)" if "data_fingerprint" in meta else "")
                  + ". Do not edit inside this block: `sidstream results regenerate` rewrites it.*\n\n")
        write_block(ctx.out / t.doc, t.name, meta, header + rendered.markdown, t.title)
        timings[t.name] = round(time.perf_counter() - started, 1)
    if any(t.machine_bound and t.name in ("pipeline", "reliability", "scale") for t in tables):
        _stop_results_broker(ctx)
    done = [t for t in tables if not t.machine_bound and t.probes and t.name not in failed]
    if done:
        started = time.perf_counter()
        Behaviour(ctx.root, ctx.out, done).record_tables(done, ctx.out)
        timings["behaviour digest"] = round(time.perf_counter() - started, 1)
    if failed:
        raise RegenerationError(failed, timings)
    return timings


class RegenerationError(RuntimeError):
    """Some tables failed (their old blocks are kept); the others were written."""

    def __init__(self, failed: dict[str, str], timings: dict[str, float]) -> None:
        super().__init__("; ".join(f"{name}: {why}" for name, why in failed.items()))
        self.failed, self.timings = failed, timings


class Behaviour:
    """Vouches for a table whose sources changed when its behaviour did not (sidstream.results.digest):
    the probes recorded for the code that made its block equal the probes of the code now, and the
    sources the probes cannot see are byte-equal. The probes run once, on first need."""

    def __init__(self, root: Path, folder: Path, tables: list[TableSpec]) -> None:
        self.root, self.record = root, digest.Record.read(folder)
        self.wanted = sorted({p for t in tables for p in t.probes})
        self._now: dict[str, dict[str, Any]] | None = None

    def now(self) -> dict[str, dict[str, Any]]:
        if self._now is None:
            self._now = digest.compute(self.wanted, self.root)
        return self._now

    def vouch(self, t: TableSpec, recorded_fingerprint: str) -> str | None:
        """None when the digest vouches for the table, else why it cannot."""
        entry = self.record.tables.get(t.name)
        if not t.probes:
            return "the table has no behaviour probes"
        if entry is None or entry.get("code") != recorded_fingerprint:
            return f"no behaviour digest recorded for the code that made it ({digest.FILE})"
        if entry.get("strict") != t.strict_fingerprint(self.root):
            return f"sources the behaviour digest cannot see changed: {', '.join(t.strict)}"
        diffs = digest.differences(self.record.probes_of(t.name), self.now(), t.probes)
        if diffs:
            return f"behaviour changed ({len(diffs)} probe value(s)), e.g. " + "; ".join(diffs[:3])
        return None

    def record_tables(self, tables: list[TableSpec], folder: Path) -> str:
        """Record the probes of the code now for `tables` (whose blocks were just made on it); the digest."""
        probes = self.now()
        for t in tables:
            self.record.put(t.name, t.code_fingerprint(self.root), t.strict_fingerprint(self.root),
                            {p: probes[p] for p in t.probes}, machine())
        self.record.write(folder)
        return digest.digest(probes)


@dataclass(frozen=True)
class Finding:
    table: str
    doc: str
    problem: str


def _audio_data_findings(t: TableSpec, meta: dict[str, Any], data_fp: str | None) -> list[Finding]:
    """The lastfm-audio table's two data folders, each re-checked when present."""
    out = []
    if data_fp is not None and meta.get("data_fingerprint") != data_fp:
        out.append(Finding(t.name, t.doc, f"stale: data fingerprint {meta.get('data_fingerprint')} recorded, {data_fp} now"))
    try:
        audio_fp = tree_fingerprint(_lastfm_audio_dir())
    except (FileNotFoundError, ValueError):
        return out  # no audio folder here: its fingerprint is not re-checked
    if meta.get("audio_fingerprint") != audio_fp:
        out.append(Finding(t.name, t.doc, f"stale: audio data fingerprint {meta.get('audio_fingerprint')} recorded, {audio_fp} now"))
    return out


def check(root: Path, folder: Path, lastfm_dir: Path | None, only: tuple[str, ...] = (),
          allow_quick: bool = False) -> tuple[list[Finding], list[str]]:
    """(problems, notes): missing or stale blocks, claims that disagree with their verdicts.

    `only` limits the check to some tables; `allow_quick` accepts blocks made with --quick
    (for checking a quick regeneration's own output)."""
    problems: list[Finding] = []
    notes: list[str] = []
    data_fp: str | None = None
    if lastfm_dir is not None and lastfm_dir.is_dir():
        data_fp = tree_fingerprint(lastfm_dir)
    else:
        notes.append("Last.fm-2k folder not available: data fingerprints not re-checked (code fingerprints are)")
    blocks_by_doc: dict[str, dict[str, Any]] = {}
    behaviour = Behaviour(root, folder, [t for t in select(only, quick=False) if not t.machine_bound])
    for t in select(only, quick=False):
        path = folder / t.doc
        if t.doc not in blocks_by_doc:
            blocks_by_doc[t.doc] = read_blocks(path.read_text(encoding="utf-8")) if path.is_file() else {}
        block = blocks_by_doc[t.doc].get(t.name)
        if block is None:
            problems.append(Finding(t.name, t.doc, "no generated block (run `sidstream results regenerate --only " + t.name + "`)"))
            continue
        meta = block.meta
        if meta.get("quick") and not allow_quick:
            problems.append(Finding(t.name, t.doc, "generated with --quick (synthetic data), not the real run"))
        if t.machine_bound:
            notes.append(f"{t.name}: measured on {meta.get('machine')} (machine-bound, exempt from the code check)")
        else:
            now = t.code_fingerprint(root)
            if meta.get("code_fingerprint") != now:
                why = behaviour.vouch(t, str(meta.get("code_fingerprint")))
                if why is None:
                    notes.append(f"{t.name}: sources changed (code fingerprint {meta.get('code_fingerprint')} recorded, {now} "
                                 f"now) but the behaviour digest of {', '.join(t.probes)} is unchanged: current")
                else:
                    problems.append(Finding(t.name, t.doc, f"stale: code fingerprint {meta.get('code_fingerprint')} recorded, "
                                            f"{now} now; {why}"))
            if meta.get("data") == "lastfm-2k+audio":
                problems += _audio_data_findings(t, meta, data_fp)
            if data_fp is not None and meta.get("data") == "lastfm-2k" and meta.get("data_fingerprint") != data_fp:
                problems.append(Finding(t.name, t.doc, f"stale: data fingerprint {meta.get('data_fingerprint')} recorded, {data_fp} now"))
    for doc, blocks in blocks_by_doc.items():
        path = folder / doc
        if not path.is_file():
            continue
        for claim in read_claims(path.read_text(encoding="utf-8")):
            block = blocks.get(claim.table)
            actual = None if block is None else block.meta.get("verdicts", {}).get(claim.verdict)
            if actual is None:
                problems.append(Finding(claim.table, doc, f"line {claim.line}: claim on unknown verdict {claim.table}:{claim.verdict}"))
            elif actual != claim.value:
                problems.append(Finding(claim.table, doc, f"line {claim.line}: the reading claims {claim.verdict} = {claim.value}, "
                                                          f"the generated verdict is {actual}"))
    known_docs = {t.doc for t in TABLES.values()}
    unknown_docs = sorted(p.name for p in folder.glob("*.md") if p.name not in known_docs)
    problems += [Finding("-", d, "a results file no table generates") for d in unknown_docs]
    return problems, notes
