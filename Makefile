# The two commands:  `make demo` (sandbox data -> tokenizer -> world model -> report) and `make test`.
# On a GPU machine, first `make gpu-check`.
# Both create .venv and install requirements.txt on first use.
# P100 / V100 users: make venv TORCH_INDEX=https://download.pytorch.org/whl/cu126
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_INDEX ?=

.PHONY: venv demo test bench play gpu-check clean-demo

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	if [ -n "$(TORCH_INDEX)" ]; then \
		$(PY) -m pip install --quiet --index-url $(TORCH_INDEX) \
			$$(grep -E '^(torch|torchvision)==' requirements.txt); fi
	$(PY) -m pip install --progress-bar on -r requirements.txt
	$(PY) -c "import torch, torchvision, av, cv2, pygame; print('torch', torch.__version__, '| cuda available:', torch.cuda.is_available())"
	touch $@

demo: venv
	$(PY) demo.py

test: venv
	SDL_VIDEODRIVER=dummy SDL_AUDIODRIVER=dummy WANDB_MODE=offline WANDB_SILENT=true \
		$(PY) -m pytest -q tests

bench: venv
	$(PY) bench.py

# a new GPU machine: every CUDA path (bf16 + compile, fp16 + scaler, NCCL, eval, play) in under 10 minutes
gpu-check: venv
	SDL_VIDEODRIVER=dummy SDL_AUDIODRIVER=dummy $(PY) gpu_check.py

play: venv
	$(PY) live_inference.py --checkpoint checkpoints/world

clean-demo:
	rm -rf data/sandbox_gf data/tokens checkpoints/tokenizer checkpoints/world reports/quickstart
