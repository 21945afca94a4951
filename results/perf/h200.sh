#!/usr/bin/env bash
# How results/perf/h200*.md were measured: one prepared run on a lent NVIDIA H200 (the image's own
# python3 and torch; acbench from this checkout on PYTHONPATH, its lazily imported extras from .whl/).
# Each section has its own time limit and writes as it goes, so a slow one cannot take the others.
# Usage: OUT=some/folder bash results/perf/h200.sh
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/acbench-perf}; mkdir -p "$OUT"
LOG=$OUT/log.txt
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl >>"$LOG" 2>&1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
A="python3 -m benchmark.cli"
section() { echo "=== $1 ($(date +%T))" | tee -a "$LOG"; }
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
} >>"$LOG" 2>&1
section "eager: every method, fp32 and bf16"
timeout 250 $A perf --all --preset paper --precision both --steps 2 --rounds 3 --warmup 1 \
  --out "$OUT/h200.md" >>"$LOG" 2>&1; echo "rc $?" >>"$LOG"
section "epochs: acl, advcl (bf16, the paper preset's CUDA default)"
for m in acl advcl; do
  timeout 70 $A perf --method $m --preset paper --precision bf16 --epochs 2 --json >>"$OUT/epochs.json" 2>>"$LOG"
  echo "rc $? ($m)" >>"$LOG"
done
section "cuda tests and an end-to-end smoke run on cuda"
timeout 45 python3 -m pytest -q -p no:cacheprovider tests/test_losses.py -k cuda >>"$LOG" 2>&1; echo "rc $?" >>"$LOG"
timeout 60 $A run --method acl --preset smoke --device cuda --results /tmp/acb --quiet --json >"$OUT/smoke.json" 2>>"$LOG"
echo "rc $?" >>"$LOG"
section "compiled: acl (bf16 first, then fp32)"
timeout 100 $A perf --method acl --preset paper --precision bf16 --compile --steps 2 --rounds 3 --warmup 2 \
  --out "$OUT/h200_compiled.md" >>"$LOG" 2>&1; echo "rc $?" >>"$LOG"
timeout 60 $A perf --method acl --preset paper --precision fp32 --compile --steps 2 --rounds 3 --warmup 2 \
  --out "$OUT/h200_compiled_fp32.md" >>"$LOG" 2>&1; echo "rc $?" >>"$LOG"
section done
