# The README's quick start, spelled out. `make demo` and `make test` install into .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch first, so that pip takes the CPU build (set TORCH_SPEC for another build, e.g. a CUDA one)
TORCH_SPEC ?= torch==2.13.0
DEMO ?= runs/demo
DEMO_EPOCHS ?= 40
# MONAI warns on every run that a config executes code; these are the project's own configs
BUNDLE_RUN := $(BIN)/python -W "ignore:parsing config_file:UserWarning" -m monai.bundle run

.PHONY: install demo demo-volume test mlflow-ui clean-demo

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

# main job: build the synthetic demo set, train the bundle on it (tracked in MLflow), fuse its pairs
demo: install
	$(BIN)/python -m data_prep demo $(DEMO)/data --overwrite
	$(BUNDLE_RUN) training \
		--config_file bundles/ssim_fusion/configs/train.yaml \
		--datalist $(DEMO)/data/datalist.json --output_dir $(DEMO)/train --epochs $(DEMO_EPOCHS) --val_interval 10 --tracking mlflow --overwrite True
	$(BUNDLE_RUN) inference \
		--config_file bundles/ssim_fusion/configs/inference.yaml \
		--ckpt_path $(DEMO)/train/models/model.pt \
		--input_dir $(DEMO)/data/CT-MRI --output_dir $(DEMO)/fused
	@echo "fused images: $(DEMO)/fused    runs: $(BIN)/mlflow ui --backend-store-uri sqlite:///$(DEMO)/train/mlruns.db"

# the 3D phantom: a CT-like and an MR-like volume on their own grids, fused whole by the shipped model
demo-volume: install
	$(BIN)/python -m data_prep demo-volumes $(DEMO)/volumes --overwrite
	$(BIN)/python -m pipeline fuse --method cnn $(DEMO)/volumes/ct.nii.gz $(DEMO)/volumes/mr.nii.gz \
		$(DEMO)/volumes/fused.nii.gz --figure $(DEMO)/volumes/fused.png --overwrite
	@echo "fused volume: $(DEMO)/volumes/fused.nii.gz (on ct.nii.gz's grid)    figure: $(DEMO)/volumes/fused.png"

test: install
	$(BIN)/python -m pytest -n auto

mlflow-ui: install
	@echo "open http://127.0.0.1:5000/#/experiments?workflowType=machine_learning (MLflow's model-training view)"
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(DEMO)/train/mlruns.db

clean-demo:
	rm -rf $(DEMO)
