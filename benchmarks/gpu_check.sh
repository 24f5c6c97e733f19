#!/usr/bin/env bash
# GPU check of the bundle, for a lent GPU machine whose Python lacks the project's pure-Python
# dependencies. Usage (from the repository root):
#   WHEELS=.whl DATALIST=data/harvard_ctmri/datalist.json EPOCHS=20 bash benchmarks/gpu_check.sh OUTDIR
# WHEELS: optional folder of wheels to install into /tmp/site first (monai, ignite, mlflow-skinny, ...).
# It prints the device, trains the bundle with mixed precision and MLflow tracking, times it,
# and runs the training/inference benchmarks when present.
set -uo pipefail
out=${1:-runs/gpu_check}
mkdir -p "$out"
source "$(dirname "$0")/gpu_env.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, monai, ignite, mlflow; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'monai', monai.__version__, 'ignite', ignite.__version__, 'mlflow', mlflow.__version__, 'gpu', torch.cuda.get_device_name(0))"
datalist=${DATALIST:-data/harvard_ctmri/datalist.json}
start=$(date +%s.%N)
python3 -m monai.bundle run training --config_file bundles/ssim_fusion/configs/train.yaml \
  --datalist "$datalist" --output_dir "$out/train" --epochs "${EPOCHS:-20}" --device cuda:0 \
  --tracking mlflow --progress_bar False ${TRAIN_ARGS:-} 2>&1 | grep -vE "UserWarning|workflow = create_workflow" | tail -n 25
end=$(date +%s.%N)
echo "bundle training wall time: $(python3 -c "print(round($end - $start, 1))") s"
python3 - "$out" <<'PY'
import sys
from mlflow.tracking import MlflowClient
out = sys.argv[1]
client = MlflowClient(tracking_uri=f"sqlite:///{out}/train/mlruns.db")
for exp in client.search_experiments():
    for run in client.search_runs([exp.experiment_id]):
        p = run.data.params
        print("MLflow run", run.info.run_id, "device:", p.get("device_name"), "cuda", p.get("cuda_version"), "amp", p.get("amp"))
        print("  metrics:", {k: round(v, 4) for k, v in sorted(run.data.metrics.items()) if k.startswith("val_")})
PY
for b in ${BENCHES-bench_training bench_inference}; do
  [ -f "benchmarks/$b.py" ] && python3 "benchmarks/$b.py" --device cuda:0 ${BENCH_ARGS:-} 2>&1 | tail -n 40
done
exit 0
