"""`sidstream results`: regenerate the tables of docs/results, check them for staleness, list them."""

from __future__ import annotations

import json
import os
import shlex
import time
from pathlib import Path

import click


def _root() -> Path:
    """The checkout whose docs/results and sources are meant: the working directory when it is
    one (CI, a clone), else the one this package was installed from (editable install)."""
    cwd = Path.cwd()
    if (cwd / "docs" / "results").is_dir() and (cwd / "sidstream").is_dir():
        return cwd
    return Path(__file__).resolve().parents[2]


@click.group()
def results() -> None:
    """Results tables (docs/results): regenerate, check, list.

    Each table lives in a generated block of its Markdown file, with the commit, command,
    machine and the fingerprints of the code and data it depends on; the reading around the
    blocks is hand-written, and its comparison claims name verdicts the generator computes."""


@results.command("list")
def list_cmd() -> None:
    """The tables, their files, and whether they are machine-bound."""
    from sidstream.results.specs import TABLES

    for t in TABLES.values():
        kind = "machine-bound" if t.machine_bound else "checked"
        click.echo(f"{t.name:22s} docs/results/{t.doc:16s} {kind:14s} {'' if t.in_quick else '(not in --quick)'}")


@results.command("regenerate")
@click.option("--quick", is_flag=True, help="synthetic data, small models, 3 seeds; skips the pipeline and reliability drills; needs --out")
@click.option("--only", multiple=True, help="table name (repeatable; see `sidstream results list`) [all]")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="folder for the Markdown files [docs/results of the checkout]")
@click.option("--lastfm", "lastfm_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Last.fm-2k folder [settings.lastfm_dir, else ../shared/data/lastfm-2k when present]")
@click.option("--jobs", type=click.IntRange(min=1), default=None, help="evaluation processes, one thread each [cores]")
@click.option("--fresh", is_flag=True, help="do not reuse evaluation runs kept from an earlier regeneration on the same code")
@click.option("--json", "as_json", is_flag=True, help="end with one JSON line: tables and seconds")
def regenerate_cmd(quick: bool, only: tuple[str, ...], out: Path | None, lastfm_dir: Path | None, jobs: int | None,
                   fresh: bool, as_json: bool) -> None:
    """Re-run what each table needs and rewrite its generated block (the reading is kept)."""
    from sidcore.config import get_settings
    from sidstream.cli import UserError
    from sidstream.results.specs import Context, RegenerationError, regenerate, select

    root = _root()
    docs = root / "docs" / "results"
    target = out or docs
    if quick and target.resolve() == docs.resolve():
        raise UserError("--quick writes synthetic-data tables: give --out another folder than docs/results")
    try:
        tables = select(only, quick)
    except KeyError as exc:
        raise UserError(str(exc.args[0])) from exc
    s = get_settings()
    lastfm_dir = lastfm_dir or s.lastfm_source
    needs_lastfm = not quick and any(not t.machine_bound for t in tables)
    if needs_lastfm and lastfm_dir is None:
        raise UserError("the Last.fm tables need the Last.fm-2k folder: --lastfm DIR or SIDSTREAM_LASTFM_DIR")
    argv = ["sidstream", "results", "regenerate", *(["--quick"] if quick else []), *(a for n in only for a in ("--only", n)),
            *(["--out", str(out)] if out else []), *(["--lastfm", str(lastfm_dir)] if lastfm_dir != s.lastfm_source else [])]
    cache = s.cache_dir / ("results-quick" if quick else "results")
    if fresh and cache.is_dir():
        import shutil

        shutil.rmtree(cache / "results-runs", ignore_errors=True)
    ctx = Context(root=root, out=target, quick=quick, jobs=jobs or os.cpu_count() or 1, cache_dir=cache,
                  lastfm_dir=lastfm_dir, command=shlex.join(argv))
    started = time.perf_counter()
    try:
        timings = regenerate(ctx, tables, progress=lambda m: click.echo(m, err=True))
    except RegenerationError as exc:
        for name, why in exc.failed.items():
            click.echo(f"FAILED {name}: {why}", err=True)
        raise UserError(f"{len(exc.failed)} table(s) failed and kept their old blocks: {', '.join(exc.failed)}; "
                        f"{len(exc.timings)} step(s) done") from exc
    total = round(time.perf_counter() - started, 1)
    for name, secs in timings.items():
        click.echo(f"{name:22s} {secs:8.1f} s", err=True)
    click.echo(f"wrote {len(tables)} table(s) under {target} in {total} s", err=True)
    if as_json:
        click.echo(json.dumps({"tables": [t.name for t in tables], "seconds": timings, "total_s": total, "quick": quick,
                               "out": str(target)}))


@results.command("check")
@click.option("--folder", type=click.Path(file_okay=False, path_type=Path), default=None, help="[docs/results of the checkout]")
@click.option("--lastfm", "lastfm_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Last.fm-2k folder for the data fingerprints [settings; skipped when absent]")
def check_cmd(folder: Path | None, lastfm_dir: Path | None) -> None:
    """Exit 1 when a table is missing, stale (its code or data changed since it was generated), or
    when the reading claims a verdict the table no longer gives; name each one."""
    from sidcore.config import get_settings
    from sidstream.results.specs import check

    root = _root()
    problems, notes = check(root, folder or root / "docs" / "results", lastfm_dir or get_settings().lastfm_source)
    for note in notes:
        click.echo(f"note: {note}", err=True)
    for p in problems:
        click.echo(f"{p.doc}: {p.table}: {p.problem}")
    if problems:
        raise SystemExit(1)
    click.echo("results: every table is current and every claim matches its verdict")


@results.command("digest")
@click.option("--record", is_flag=True, help="record the probes for every table whose block was made on the code now "
              "(its code fingerprint is current); others are named and left")
@click.option("--json", "as_json", is_flag=True, help="one JSON line: the digest and per table its state")
def digest_cmd(record: bool, as_json: bool) -> None:
    """The behaviour digest: outputs of small deterministic probes of the code behind the tables
    (docs/results/behaviour.json). A table whose sources changed stays current while its probes
    give the recorded values (floats within a tolerance) and its rendering sources are unchanged."""
    from sidstream.results.blocks import read_blocks
    from sidstream.results.digest import digest
    from sidstream.results.specs import TABLES, Behaviour

    root = _root()
    folder = root / "docs" / "results"
    tables = [t for t in TABLES.values() if t.probes]
    behaviour = Behaviour(root, folder, tables)
    states: dict[str, str] = {}
    current = []
    for t in tables:
        path = folder / t.doc
        block = read_blocks(path.read_text(encoding="utf-8")).get(t.name) if path.is_file() else None
        recorded = None if block is None else str(block.meta.get("code_fingerprint"))
        if recorded is None:
            states[t.name] = "no block"
        elif recorded == t.code_fingerprint(root):
            states[t.name] = "current (code fingerprint)"
            current.append(t)
        else:
            why = behaviour.vouch(t, recorded)
            states[t.name] = "current (behaviour digest)" if why is None else f"stale: {why}"
    now = digest(behaviour.now())
    if record and current:
        behaviour.record_tables(current, folder)
    if as_json:
        click.echo(json.dumps({"digest": now, "tables": states, "recorded": [t.name for t in current] if record else []}))
        return
    click.echo(f"behaviour digest now: {now}")
    for name, state in states.items():
        click.echo(f"  {name:22s} {state}")
    if record:
        click.echo(f"recorded for {len(current)} table(s) in docs/results/behaviour.json", err=True)
