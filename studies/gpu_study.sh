#!/usr/bin/env bash
# The training study's GPU preset in one call on a lent GPU machine (see benchmarks/gpu_check.sh for
# WHEELS): every configuration trained at once on the one GPU (one CPU thread each), tracked in one
# MLflow store; the folder is left complete even when STUDY_SECONDS cuts the study short (each run's
# models/model.pt is its best validation so far; the table marks it with the epoch MLflow has).
# Usage: WHEELS=.whl [STUDY="name,..."] [STUDY_SECONDS=400] [JOBS=12] bash studies/gpu_study.sh OUTDIR
set -uo pipefail
out=${1:-runs/gpu_study}
datalist=${DATALIST:-data/harvard_ctmri/datalist.json}
mkdir -p "$out/study"
source "$(dirname "$0")/../benchmarks/gpu_env.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
# The store on tmpfs: on a virtual disk every MLflow transaction waits for a sync.
db=/dev/shm/gpu_study_mlruns.db
args=(--datalist "$datalist" --out "$out/study" --device cuda:0 --preset gpu --threads 1 --no-test
      --tracking-uri "sqlite:///$db")
# progress: epoch times of the running configurations after a minute
( sleep 75; echo "--- after 75 s:"; grep -h "SupervisedTrainer - INFO - Epoch\[.*Complete" "$out"/study/*/train.log | tail -n 4;
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader ) &
start=$(date +%s)
timeout "${STUDY_SECONDS:-400}" python3 studies/train_study.py "${args[@]}" --jobs "${JOBS:-12}" \
  ${STUDY:+--only "$STUDY"} 2>&1 | grep -v "^|" | tail -n 20
echo "study wall time: $(( $(date +%s) - start )) s"
cp "$db" "$out/study/mlruns.db" 2>/dev/null
# the table from the MLflow store (runs cut short: their last validation, marked *)
python3 studies/train_study.py "${args[@]}" --table-only 2>&1 | grep "^|"
exit 0
