#!/usr/bin/env bash
# Second H200 run: where an ACL step's time goes (cuDNN autotuner off/on, profiler), two timed
# pretraining epochs of acl and advcl, and an end-to-end smoke run on CUDA (interrupted with a
# traceback if it runs past its limit).
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/acbench-perf}; mkdir -p "$OUT"; LOG=$OUT/log2.txt
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl >>"$LOG" 2>&1
export PYTHONPATH=/tmp/site:$PWD
A="python3 -m benchmark.cli"
timeout 80 python3 results/perf/h200_profile.py acl bf16 >"$OUT/profile.txt" 2>>"$LOG"; echo "rc $? profile" >>"$LOG"
for m in acl advcl; do
  timeout 70 $A perf --method $m --preset paper --precision bf16 --epochs 2 --out "$OUT/epochs_$m.md" >>"$LOG" 2>&1
  echo "rc $? epochs $m" >>"$LOG"
done
timeout -s INT -k 10 100 $A --debug run --method acl --preset smoke --device cuda --results /tmp/acb \
  >"$OUT/smoke.txt" 2>&1; echo "rc $? smoke" >>"$LOG"
