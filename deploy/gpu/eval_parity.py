"""Last.fm-2k Cold AUC with everything on a GPU, per seed, against the CPU headline runs.

The same runs as the headline table (docs/results/lastfm.md: `sidstream.results.runs`, seed s =
ranker s = codebook s, 3 epochs, lr 1e-3, batch 512), but the codebooks are fitted with torch
k-means on the GPU (settings.codebook.device = cuda), the ranker trains on the GPU (bf16
autocast, device-resident batches) and the text embeddings come from the GPU encoder. Prints
one JSON line per run and a summary (mean and std of Cold AUC per model). Compare with the
CPU means of the same seeds in docs/results/lastfm.md.

Usage (GPU host): python3 deploy/gpu/eval_parity.py LASTFM_DIR [--seeds 5] [--device cuda]
"""

from __future__ import annotations

import argparse
import gzip
import json
import pickle
import time

import numpy as np

MODELS = ("din+psrq", "mcca")


def gpu(lastfm: str, seeds: int, device: str = "cuda", prepared: str | None = None, save: str | None = None) -> None:
    from sidstream.results.runs import DataSource, bases, load
    from trainer.evaluate import parse_spec, run_one
    from trainer.train_loop import TrainConfig

    source = DataSource("synthetic") if lastfm == "synthetic" else DataSource("lastfm", lastfm)
    started = time.perf_counter()
    if prepared:  # converted and embedded on the CPU host (the CPU runs' exact inputs)
        with gzip.open(prepared, "rb") as f:
            prep = pickle.load(f)
    else:
        prep = load(source)
    if save:
        with gzip.open(save, "wb", compresslevel=6) as f:
            pickle.dump(prep, f, protocol=pickle.HIGHEST_PROTOCOL)
        print(json.dumps({"saved": save}))
        return
    print(json.dumps({"prepared_s": round(time.perf_counter() - started, 1), "train_rows": len(prep.train)}), flush=True)
    model_base, codebook_base = bases(source)
    codebook_base = codebook_base.model_copy(update={"device": device})
    cold: dict[str, list[float]] = {m: [] for m in MODELS}
    for model in MODELS:
        spec = parse_spec(model, model_base, codebook_base, prep.modalities)
        for seed in range(seeds):
            t0 = time.perf_counter()
            out = run_one(prep, spec, seed, TrainConfig(epochs=3, lr=1e-3, batch_size=512, device=device), None)
            cold[model].append(out["cold_auc"])
            print(json.dumps({"model": model, "seed": seed, "cold_auc": round(out["cold_auc"], 4),
                              "all_auc": round(out["all_auc"], 4), "train_samples_per_s": round(out["train_samples_per_s"]),
                              "distinct_sids": out["distinct_sids"], "wall_s": round(time.perf_counter() - t0, 1)}), flush=True)
    print(json.dumps({"summary": {m: {"mean": round(float(np.mean(v)), 4), "std": round(float(np.std(v, ddof=1)), 4)}
                                  for m, v in cold.items()}, "device": device}), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lastfm", help="the Last.fm-2k folder, or 'synthetic' (a smoke run)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--prepared", help="a gzipped pickle of the prepared data set (from --save-prepared)")
    parser.add_argument("--save-prepared", dest="save", help="write the prepared data set here and stop")
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    gpu(args.lastfm, args.seeds, args.device, args.prepared, args.save)
