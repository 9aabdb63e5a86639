#!/usr/bin/env bash
# One pass on a lent GPU machine: the gpu-marked tests, then offline benchmarks.
# Writes logs and JSON lines under $OUT (or ./gpu-out). Installs nothing from the network.
set -u
repo=$(pwd)
out=${OUT:-$repo/gpu-out}; mkdir -p "$out"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
start=$(date +%s)
elapsed() { echo $(( $(date +%s) - start )); }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$out/gpu.txt"
# The package as it installs (daemon/ and kernels/ under vlmctl/), without pip or setuptools.
site=/tmp/vlmctl-site; rm -rf "$site"; mkdir -p "$site"
cp -r vlmctl "$site/" && cp -r daemon "$site/vlmctl/daemon" && cp -r kernels "$site/vlmctl/kernels"
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
# Run from the site: from the repository root, its own vlmctl/ (without daemon/) would
# shadow the assembled package, since python puts the working directory first on sys.path.
cd "$site"
python3 -c "import vlmctl.daemon.worker.loading" || { echo "vlmctl does not import"; exit 1; }

echo "== gpu tests (t=$(elapsed)s)"
timeout 240 python3 -m pytest -q -m gpu "$repo/tests/test_gpu.py" --rootdir "$repo" -c "$repo/pyproject.toml" \
  -p no:cacheprovider 2>&1 | tee "$out/gpu_tests.log" | tail -15

echo "== tiny, bf16, mixed, batch 8 (t=$(elapsed)s)"
timeout 120 python3 "$repo/benchmarks/offline.py" --device cuda --dtype bfloat16 --preset tiny --mixed --batch-size 8 \
  --repeats 2 --json 2>"$out/bench_tiny.err" | tee -a "$out/bench.jsonl"

echo "== small (CLIP-L + 1.3B Llama), bf16, 64 tokens, batch 32 (t=$(elapsed)s)"
timeout 200 python3 "$repo/benchmarks/offline.py" --device cuda --dtype bfloat16 --preset small --batch-size 32 \
  --serial-requests 8 --repeats 1 --json 2>"$out/bench_small.err" | tee -a "$out/bench.jsonl"

if [ "$(elapsed)" -lt 300 ]; then
  echo "== 7b shape, bf16, 64 tokens, batch 32 (t=$(elapsed)s)"
  timeout 240 python3 "$repo/benchmarks/offline.py" --device cuda --dtype bfloat16 --preset 7b --batch-size 32 \
    --serial-requests 2 --repeats 1 --json 2>"$out/bench_7b.err" | tee -a "$out/bench.jsonl"
fi
tail -3 "$out"/bench_*.err
echo "done in $(elapsed)s"
