"""`sidstream status`: what is live, what is being backfilled, and what Feast holds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click


def rows_by_version(feast_dir: Path, profile: str, redis_url: str) -> dict[str, int]:
    """Online SID rows per codebook version, over every track the offline log has seen."""
    import pandas as pd

    from streams.sinks.feast import open_store, read_sids

    parts = sorted((feast_dir / "data" / "offline" / "track_sids").glob("part-*.parquet"))
    if not parts:
        return {}
    seen = pd.concat([pd.read_parquet(p, columns=["track_id", "codebook_version"]) for p in parts])
    store = open_store(feast_dir, profile=profile, redis_url=redis_url)
    ids = sorted(seen["track_id"].unique())
    out = {}
    for version in sorted(seen["codebook_version"].unique()):
        df = read_sids(store, ids, version)
        out[version] = int(df["sid_event_time_ms"].notna().sum())
    return out


def status_report() -> dict[str, Any]:
    from sidcore.config import get_settings
    from sidcore.registry import Registry

    s = get_settings()
    registry = Registry(s.registry_dir)
    live, pending = registry.live("codebooks"), registry.pending("codebooks")
    ranker = registry.live("ranker")
    backfill = None
    if pending is not None:
        state = s.home / "work" / f"backfill-{pending.version}" / "state.json"
        backfill = {"version": pending.version, **(json.loads(state.read_text()) if state.is_file() else {"done": 0})}
    last_training = next((e for e in reversed(registry.events("ranker")) if e.get("event") == "promoted"), None)
    return {
        "codebooks": {"live": live.version if live else None, "pending": pending.version if pending else None,
                      "last_events": registry.events("codebooks")[-3:]},
        "ranker": {"live": ranker.version if ranker else None,
                   "codebook_version": ranker.manifest.get("codebook_version") if ranker else None,
                   "metrics": {k: (ranker.manifest.get("metrics") or {}).get(k) for k in ("all_auc", "cold_auc")}
                   if ranker else None},
        "backfill": backfill,
        "rows_by_version": rows_by_version(s.feast_dir, s.feast_profile, s.redis_url),
        "last_training": last_training,
    }


@click.command()
@click.option("--json", "as_json", is_flag=True, help="one JSON line")
def status(as_json: bool) -> None:
    """Live codebook and ranker versions, backfill state, rows per version in Feast, last training."""
    report = status_report()
    if as_json:
        click.echo(json.dumps(report, default=str))
        return
    from rich.console import Console

    Console().print_json(json.dumps(report, default=str))
