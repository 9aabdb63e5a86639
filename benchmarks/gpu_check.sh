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

echo "== build the small model (CLIP-L 336 + 1.3B Llama), bf16 (t=$(elapsed)s)"
small=/tmp/vlmctl-small
timeout 120 python3 -c "
import torch
from vlmctl.testing.tiny_models import PRESETS, build_tiny_llava
build_tiny_llava('$small', PRESETS['small'], device='cuda', dtype=torch.bfloat16)
" 2>"$out/build.err" || tail -5 "$out/build.err"

echo "== decode step A/B (t=$(elapsed)s)"
timeout 100 python3 "$repo/benchmarks/decode_step.py" --model "$small" --device cuda --dtype bfloat16 \
  2>"$out/decode_step.err" | tee "$out/decode_step.txt"

echo "== gpu tests (t=$(elapsed)s)"
timeout 150 python3 -m pytest -q -m gpu "$repo/tests/test_gpu.py" --rootdir "$repo" -c "$repo/pyproject.toml" \
  -p no:cacheprovider 2>&1 | tee "$out/gpu_tests.log" | tail -15

echo "== offline benchmark, small, 64 tokens, batch 32 (t=$(elapsed)s)"
timeout 150 python3 "$repo/benchmarks/offline.py" --model "$small" --device cuda --dtype bfloat16 --batch-size 32 \
  --serial-requests 4 --repeats 1 --json 2>"$out/bench_small.err" | tee -a "$out/bench.jsonl"
for f in "$out"/*.err; do echo "-- $f"; tail -n 4 "$f"; done
echo "done in $(elapsed)s"
