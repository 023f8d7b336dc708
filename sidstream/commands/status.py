"""`sidstream status`: what is live, what is being backfilled, and what Feast holds."""

from __future__ import annotations

import json
from typing import Any

import click

from sidcore.config import get_settings
from sidcore.registry import Registry
from streams.sinks.reader import rows_by_version


def refit_summary(manifest: dict[str, Any] | None) -> dict[str, Any] | None:
    """Per modality of a codebook version: how its refit was made (warm | fresh, why) and what it
    kept of its parent's IDs (trainer.jobs.kept_shares); None for a version without a parent."""
    metrics = (manifest or {}).get("metrics") or {}
    out = {m: {"taken": (v.get("refit") or {}).get("taken"), "reason": (v.get("refit") or {}).get("reason"),
               "kept_path": (v.get("kept") or {}).get("path"), "kept_layers": (v.get("kept") or {}).get("layers"),
               "identity_size_kept": (v.get("kept") or {}).get("identity_size_kept")}
           for m, v in metrics.items() if isinstance(v, dict) and ("refit" in v or "kept" in v)}
    return out or None


def status_report() -> dict[str, Any]:
    s = get_settings()
    registry = Registry(s.registry_dir)
    live, pending = registry.live("codebooks"), registry.pending("codebooks")
    ranker = registry.live("ranker")
    backfill = None
    if pending is not None:
        state = s.home / "work" / f"backfill-{pending.version}" / "state.json"
        backfill = {"version": pending.version, **(json.loads(state.read_text()) if state.is_file() else {"done": 0})}
    last_training = next((e for e in reversed(registry.events("ranker")) if e.get("event") == "promoted"), None)
    last_gate = next((e for e in reversed(registry.events("ranker")) if "gate" in e), None)
    return {
        "codebooks": {"live": live.version if live else None, "pending": pending.version if pending else None,
                      "refit": refit_summary(live.manifest if live else None),
                      "last_events": registry.events("codebooks")[-3:]},
        "ranker": {"live": ranker.version if ranker else None,
                   "codebook_version": ranker.manifest.get("codebook_version") if ranker else None,
                   "metrics": {k: (ranker.manifest.get("metrics") or {}).get(k) for k in ("all_auc", "cold_auc")}
                   if ranker else None},
        "backfill": backfill,
        "prune": {"keep_versions": s.train.keep_versions,
                  "versions": json.loads(prune.read_text()) if (prune := s.home / "work" / "prune.json").is_file() else {}},
        "rows_by_version": rows_by_version(s.feast_dir, s.feast_profile, s.redis),
        "last_training": last_training,
        "last_ranker_gate": None if last_gate is None else {
            "version": last_gate["version"], "decision": last_gate["event"], "reason": last_gate.get("reason"),
            **{k: last_gate["gate"].get(k) for k in ("candidate_auc", "candidate_interval", "live_version", "live_auc",
                                                      "diff_interval")}},
    }


@click.command()
@click.option("--json", "as_json", is_flag=True, help="one JSON line")
def status(as_json: bool) -> None:
    """Live codebook and ranker versions, backfill and prune state, rows per version in Feast, last training."""
    report = status_report()
    if as_json:
        click.echo(json.dumps(report, default=str))
        return
    from rich.console import Console

    Console().print_json(json.dumps(report, default=str))
