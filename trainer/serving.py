"""Scoring for ranking services: the live ranker and its codebook version as one snapshot, swapped
as a whole when the registry's LIVE pointers move, and the scores of a user's candidates from the
rows the caller read (SIDs under the ranker's codebook version -- the one it was trained on, or the
live warm child the ranker gate let it serve: trainer.ranker_gate.serving_codebooks -- and the
user's history).
`sidstream serve` (the app layer) reads the store (streams.sinks.reader) and calls `rank`."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from sidcore.config import Settings
from sidcore.registry import Registry
from trainer.fast_rank import FastRanker
from trainer.features import HISTORY_LEN
from trainer.jobs import load_ranker
from trainer.ranker_gate import serving_codebooks

log = logging.getLogger(__name__)

Sids = dict[str, dict[str, list[int] | None]]  # track -> {text_sid, audio_sid, joint_sid}
SidReader = Callable[[list[str], str], Sids]  # (tracks, codebook version) -> rows of the tracks found
PRECOMPUTE_READ = 1000  # tracks per store read while a new ranker's item vectors are precomputed


@dataclass(frozen=True)
class Snapshot:
    """What one request uses, swapped as a whole: the live ranker and its codebook version."""

    live_codebooks: str | None
    ranker_version: str | None
    ranker_codebooks: str | None  # the codebook version whose SIDs the ranker reads (trainer.ranker_gate.serving_codebooks)
    model: Any
    id_rows: dict[str, int]
    layers: dict[str, int]  # codebook -> semantic layers the ranker embeds
    history_len: int
    gate: dict[str, Any] | None = None  # the ranker gate's decision on the live ranker (its manifest)
    fast: FastRanker | None = None  # the ranker's serving fast path, its vocabulary's item vectors precomputed


EMPTY = Snapshot(None, None, None, None, {}, {}, HISTORY_LEN)


class ServingState:
    """Holds the current Snapshot; `refresh` loads newly promoted versions, `start` every
    `settings.serve.reload_s` seconds on a background thread. With `read_sids`, a new ranker's
    item vectors are precomputed (up to `serve.item_vectors` of its vocabulary) before it is
    swapped in."""

    def __init__(self, settings: Settings, read_sids: SidReader | None = None) -> None:
        self.settings = settings
        self.read_sids = read_sids
        self.registry = Registry(settings.registry_dir)
        self.snapshot = EMPTY
        self.switches = 0
        self.on_switch: Callable[[], None] | None = None  # called on every swap after start-up
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.refresh()

    def refresh(self) -> bool:
        """Swap in the registry's live versions if they changed; True when it swapped."""
        cb = self.registry.live("codebooks")
        rk = self.registry.live("ranker")
        cur = self.snapshot
        live_cb = cb.version if cb else None
        ranker_v = rk.version if rk else None
        reads = None if rk is None else serving_codebooks(self.registry.events("ranker"), rk.version,
                                                          rk.manifest.get("codebook_version"), live_cb)
        if live_cb == cur.live_codebooks and ranker_v == cur.ranker_version and reads == cur.ranker_codebooks:
            return False
        if ranker_v == cur.ranker_version:
            fast = cur.fast if reads == cur.ranker_codebooks else self._fast(cur.model, cur.id_rows, cur.layers, reads)
            new = Snapshot(live_cb, cur.ranker_version, reads, cur.model, cur.id_rows, cur.layers, cur.history_len,
                           cur.gate, fast)
        elif rk is None:
            new = Snapshot(live_cb, None, None, None, {}, {}, HISTORY_LEN)
        else:
            model, vocab, manifest = load_ranker(rk)
            model.eval()
            torch.set_num_threads(self.settings.serve.torch_threads)
            # numpy's BLAS too (OpenBLAS starts a thread per core): the fast path's products are
            # small, and a second BLAS thread spins on the core the load's other processes need
            threadpool_limits(limits=self.settings.serve.torch_threads, user_api="blas")
            sizes = manifest.get("codebook_sizes") or {}
            id_rows = {item: i + 1 for i, item in enumerate(vocab)}
            layers = {m: len(k) for m, k in sizes.items()}
            fast = self._fast(model, id_rows, layers, reads)
            new = Snapshot(live_cb, rk.version, reads, model, id_rows, layers, HISTORY_LEN, manifest.get("gate"), fast)
        self.snapshot = new  # one reference: a request holds the old or the new snapshot
        self.switches += 1
        if self.on_switch is not None:
            self.on_switch()
        log.info("serving ranker %s (codebooks %s); live codebooks %s", new.ranker_version, new.ranker_codebooks, live_cb)
        return True

    def _fast(self, model: Any, id_rows: dict[str, int], layers: dict[str, int], version: str | None) -> FastRanker | None:
        """The fast path with the item vectors of the vocabulary's first `serve.item_vectors`
        tracks that have SIDs under the ranker's codebook version (None: no fast path for this
        model kind; /rank then runs the model's forward)."""
        try:
            fast = FastRanker(model, id_rows, layers, cold_rows=self.settings.serve.cold_rows)
        except TypeError as exc:
            log.warning("no serving fast path: %s", exc)
            return None
        if self.read_sids is None or version is None:
            return fast
        vocab = list(id_rows)[: self.settings.serve.item_vectors]
        tracks: list[str] = []
        rows: list[dict[str, list[int] | None]] = []
        for start in range(0, len(vocab), PRECOMPUTE_READ):
            found = self.read_sids(vocab[start : start + PRECOMPUTE_READ], version)
            tracks += found
            rows += found.values()
        fast.precompute(tracks, rows)
        log.info("precomputed item vectors of %d tracks (%.1f MB)", len(tracks), fast.nbytes / 1e6)
        return fast

    def start(self) -> None:
        def loop() -> None:
            while not self._stop.wait(self.settings.serve.reload_s):
                try:
                    self.refresh()
                except Exception:  # noqa: BLE001 - a bad new version must not stop serving the current one
                    log.exception("could not load the new live versions; still serving %s", self.snapshot.ranker_version)

        self._thread = threading.Thread(target=loop, name="serve-reload", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()


def rank(snap: Snapshot, sids: Sids, history: list[str], candidates: list[str]) -> dict[str, Any]:
    """Scores of the candidates that have SIDs (`sids`: rows under the ranker's codebook version,
    of the candidates and the history); the rest are listed as unknown. Candidates outside the
    ranker's ID vocabulary are scored from their SIDs alone (their ID embedding is the zero
    padding row). `history`: the user's last positives, oldest first."""
    known = [c for c in dict.fromkeys(candidates) if c in sids]
    unknown = [c for c in dict.fromkeys(candidates) if c not in sids]
    if not known:
        return {"scored": [], "unknown": unknown, "history_len": len(history)}
    T = snap.history_len
    hist = [h for h in history if h in sids][-T:]
    pad = T - len(hist)
    rows = np.array([snap.id_rows.get(c, 0) for c in known], dtype=np.int64)
    hist_rows = np.array([0] * pad + [snap.id_rows.get(h, 0) for h in hist], dtype=np.int64)
    mask = np.array([False] * pad + [True] * len(hist))
    B = len(known)
    batch: dict[str, torch.Tensor] = {
        "item": torch.from_numpy(rows),
        "hist_item": torch.from_numpy(np.tile(hist_rows, (B, 1))),
        "hist_mask": torch.from_numpy(np.tile(mask, (B, 1))),
    }
    for modality, L in snap.layers.items():
        column = f"{modality}_sid"

        def codes(track: str, _col: str = column, _L: int = L) -> list[int]:
            v = sids[track].get(_col)
            return list(v[:_L]) if v is not None and len(v) >= _L else [-1] * _L

        cand = np.array([codes(c) for c in known], dtype=np.int64).reshape(B, L)
        h = np.array([[-1] * L] * pad + [codes(t) for t in hist], dtype=np.int64).reshape(T, L)
        batch[f"codes:{modality}"] = torch.from_numpy(cand)
        batch[f"hist_codes:{modality}"] = torch.from_numpy(np.tile(h, (B, 1, 1)))
    with torch.inference_mode():
        p = torch.sigmoid(snap.model(batch).float()).numpy()
    order = np.argsort(-p, kind="stable")
    scored = [{"track_id": known[i], "score": float(p[i]), "cold": known[i] not in snap.id_rows} for i in order]
    return {"scored": scored, "unknown": unknown, "history_len": len(hist)}
