#!/usr/bin/env bash
# Every GPU check and benchmark of the project in one run (under 8 minutes on one GPU). Each part has its own
# time limit, so one slow part cannot take the others down; figures and logs go to $OUT, the lines for
# benchmarks/README.md to $OUT/summary.md.
#
#   benchmarks/gpu_suite.sh                # OUT defaults to /tmp/beit3-gpu-suite
#   OUT=/tmp/gpu benchmarks/gpu_suite.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/beit3-gpu-suite}
mkdir -p "$OUT"
export PYTHONPATH=$PWD RAY_AUTH_MODE=disabled PYTHONUNBUFFERED=1
SUMMARY=$OUT/summary.md
STARTED=$(date +%s)
echo "# GPU suite, $(date -u +%Y-%m-%d), $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)" > "$SUMMARY"

part() {  # part NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log, record ok/failed
  local name=$1 limit=$2
  shift 2
  local start=$(date +%s)
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  local state=ok
  [ $rc -eq 0 ] || state="FAILED (exit $rc; see $name.log)"
  echo "- $name: $state, $(( $(date +%s) - start )) s" | tee -a "$SUMMARY"
}

python - <<'PY' > "$OUT/environment.txt" 2>&1
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "device", torch.cuda.get_device_name(0))
print("bf16 supported", torch.cuda.is_bf16_supported())
PY

# Shards at 224 px for the loader benchmark (real shard writer, generated images).
part shards 40 python -c "
import sys; sys.path.insert(0, 'tests')
from pathlib import Path
from support.shards import build_test_shards
build_test_shards(Path('$OUT/shards'), num_shards=4, per_kind=64, img_size=224, patch=16)
"

# 1. Tests marked gpu: FSDP2 + bf16 recovery with identical weights, a learning FSDP2 step.
part pytest_gpu 170 python -m pytest -q -m gpu tests/integration/test_gpu.py

# 2. MDM train step against torchscale, base at batch 64, bf16 (targets: >= 4x on pairs, >= 40% of bf16 peak).
part train_step 100 python benchmarks/train_step.py --model beit3_base_patch16_224 --batch 64 --dtype bf16 \
  --device cuda --steps 5 --rounds 3 --warmup 3 --json "$OUT/train_step.json"

# 3. Visual tokenizer encode (target >= 3,000 images/s for the base tokenizer).
part tokenizer 40 python benchmarks/tokenizer_throughput.py --device cuda --dtype bf16 --batch 256 --iters 5

# 4. Pretraining end to end against model only (target >= 95%), loader in worker processes.
part pretrain_throughput 50 python benchmarks/pretrain_throughput.py --shards "$OUT/shards" \
  --model beit3_tiny --loader-workers 4 --steps 20 --warmup 5 --device cuda --json "$OUT/pretrain_throughput.json"

# 5. Stream resume: first batch at step 10 against step 100,000 on 1,000 shards (CPU-bound; on 16 cores).
part stream_resume 40 python benchmarks/stream_resume.py --shards 1000 --steps 10 100000 --loader-workers 4

echo "total: $(( $(date +%s) - STARTED )) s" | tee -a "$SUMMARY"
for log in train_step tokenizer pretrain_throughput stream_resume; do
  { echo; echo "## $log"; tail -n 20 "$OUT/$log.log"; } >> "$SUMMARY"
done
