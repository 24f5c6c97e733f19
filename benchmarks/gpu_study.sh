#!/usr/bin/env bash
# The GPU part of the training issue, in one call on a lent GPU machine (see benchmarks/gpu_check.sh
# for WHEELS): training and inference throughput on the GPU, then the training study's GPU preset.
# Usage: WHEELS=.whl STUDY="base,alpha2,..." bash benchmarks/gpu_study.sh OUTDIR
set -uo pipefail
out=${1:-runs/gpu_study}
mkdir -p "$out"
source "$(dirname "$0")/gpu_env.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
timeout 120 python3 benchmarks/bench_training.py --device cuda:0 --attribution 2>&1 | tee "$out/bench_training.txt"
timeout 90 python3 benchmarks/bench_inference.py --device cuda:0 --no-baselines --no-compile 2>&1 | tee "$out/bench_inference.txt"
timeout "${STUDY_SECONDS:-300}" python3 benchmarks/train_study.py --datalist "${DATALIST:-data/harvard_ctmri/datalist.json}" \
  --out "$out/study" --device cuda:0 --preset gpu --jobs "${JOBS:-6}" ${STUDY:+--only "$STUDY"} 2>&1 | tail -n 40
# a study cut by its time limit: write the table of the configurations that finished
done_names=$(cd "$out/study" 2>/dev/null && ls -d */result.json 2>/dev/null | cut -d/ -f1 | paste -sd, -)
[ -n "$done_names" ] && python3 benchmarks/train_study.py --datalist "${DATALIST:-data/harvard_ctmri/datalist.json}" \
  --out "$out/study" --device cuda:0 --preset gpu --only "$done_names" > /dev/null 2>&1
cp "$out"/study/study.md "$out"/study/study.csv "$out"/study/mlruns.db "$out"/ 2>/dev/null
exit 0
