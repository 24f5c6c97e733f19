#!/usr/bin/env bash
# The shipped networks' recipe (model card, "Shipped networks"): one training on every pair type, then
# a short fine-tuning per pair type with frozen batch-norm statistics; copies the results into the
# bundle (models/model_<pair>.pt, model.pt = the CT-MRI network, model.ts its TorchScript export).
# Usage: bash studies/ship_models.sh HARVARD_DIR OUT [DEVICE]
#   HARVARD_DIR: the flat atlas pair tree (../shared/data/harvard); OUT: data and runs go here.
#   With OMP_NUM_THREADS=1 these are the commands the shipped weights came from (CPU training is
#   deterministic, tests/test_bundle.py); other thread counts round differently: another draw.
#   Measured with OMP_NUM_THREADS=2 on the quiet 2-core CPU: 15 min 21 s in all (model card, "Cost").
set -euo pipefail
src=${1:?HARVARD_DIR}; out=${2:?OUT}; device=${3:-cpu}
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
configs="['bundles/ssim_fusion/configs/train.yaml','studies/defaults.yaml']"
cases=(--training-cases 2 28 32 33 37 25 3 4 10 11 21 29 40 --validation-cases 20 41 18 35 --test-cases 34 30 15 22)
common=(--progress_bar False --overwrite True --device "$device" --seed 0 --alpha 4.0 --batch_size 8 --patch_size 64
        --source_weights variance --val_metrics "[]")
python -m data_prep harvard "$src" "$out/data/all" "${cases[@]}" --overwrite
for pair in CT-MRI PET-MRI SPECT-MRI; do
  python -m data_prep harvard "$src" "$out/data/$pair" --pairs "$pair" "${cases[@]}" --overwrite
done
time python -m monai.bundle run training --config_file "$configs" --datalist "$out/data/all/datalist.json" \
  --output_dir "$out/all" "${common[@]}" --epochs 140 --val_interval 140 --learning_rate 0.005 --lr_schedule True \
  --terms "{'gradient': 8.0, 'maxint': 4.0}"
# fine-tuning: about 1,000 iterations per pair type (epochs x training pairs / 8)
declare -A epochs=([CT-MRI]=84 [PET-MRI]=84 [SPECT-MRI]=40)
# the terms chosen per pair type on validation (model card, "What was tried")
declare -A terms=([CT-MRI]="{'gradient': 16.0, 'maxint': 4.0}" [PET-MRI]="{'gradient': 8.0, 'maxint': 4.0}"
                  [SPECT-MRI]="{'gradient': 8.0, 'maxint': 8.0}")
models=bundles/ssim_fusion/models
for pair in CT-MRI PET-MRI SPECT-MRI; do
  time python -m monai.bundle run training --config_file "$configs" --datalist "$out/data/$pair/datalist.json" \
    --output_dir "$out/$pair" "${common[@]}" --epochs "${epochs[$pair]}" --val_interval "${epochs[$pair]}" \
    --learning_rate 0.001 --lr_schedule True --init_weights "$out/all/models/model.pt" --freeze_batch_norm True \
    --terms "${terms[$pair]}"
  cp "$out/$pair/models/model.pt" "$models/model_$(echo "$pair" | tr 'A-Z' 'a-z').pt"
done
cp "$models/model_ct-mri.pt" "$models/model.pt"
python -m monai.bundle ckpt_export network_def --filepath "$models/model.ts" --ckpt_file "$models/model.pt" \
  --meta_file bundles/ssim_fusion/configs/metadata.json --config_file bundles/ssim_fusion/configs/inference.yaml
