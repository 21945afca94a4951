#!/usr/bin/env bash
# Third H200 run, after LARS went multi-tensor: every method again (eager, fp32 and bf16), a
# timed ACL epoch, and the ACL step's profile by op and input shape.
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/acbench-perf}; mkdir -p "$OUT"; LOG=$OUT/log3.txt
export PYTHONPATH=$PWD
A="python3 -m benchmark.cli"
timeout 140 $A perf --all --preset paper --precision both --steps 2 --rounds 3 --warmup 1 \
  --out "$OUT/h200.md" >>"$LOG" 2>&1; echo "rc $? eager" >>"$LOG"
timeout 40 $A perf --method acl --preset paper --precision bf16 --epochs 2 --json >"$OUT/epochs_acl.json" 2>>"$LOG"
echo "rc $? epochs" >>"$LOG"
timeout 30 python3 results/perf/h200_profile.py acl bf16 >"$OUT/profile.txt" 2>>"$LOG"; echo "rc $? profile" >>"$LOG"
