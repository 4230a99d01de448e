# The two commands a newcomer runs: `make demo` and `make test`. Both create .venv/ and install what they need.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
CONSTRAINTS := requirements/constraints.txt
INSTALLED := $(VENV)/.installed
KERNELS := $(VENV)/.kernels
DEMO_OUT ?= demo-output

.PHONY: install demo test lint bench clean

install: $(INSTALLED) $(KERNELS)

# Re-runs whenever the project's requirements change; galaxy-datasets is the reference for the decision trees in the
# tests and comes without its dependencies (torch and friends), which the tests never import.
$(INSTALLED): pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e ".[dev]"
	$(BIN)/python -m pip install --quiet --no-deps -c $(CONSTRAINTS) galaxy-datasets
	touch $@

# The numba kernels compiled into the package (numba's cache in zoobot_pipeline/__pycache__), so that no process pays
# numba's 5-10 s compilation; again whenever their source changes.
$(KERNELS): $(INSTALLED) zoobot_pipeline/_numba_cache.py zoobot_pipeline/_vote_space.py \
		zoobot_pipeline/data/image_kernels.py
	$(BIN)/zoobot-pipeline kernels compile
	touch $@

# The demo's Prefect runs go to a temporary local API with its SQLite database under $(DEMO_OUT)/.prefect, unless
# PREFECT_API_URL points at a server. Prefect waits 20 s for that API by default, too little on a busy 2-core machine.
demo: $(KERNELS)
	mkdir -p $(DEMO_OUT)/.prefect
	PREFECT_HOME=$${PREFECT_HOME:-$(abspath $(DEMO_OUT))/.prefect} PREFECT_SERVER_ANALYTICS_ENABLED=false \
	PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=$${PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS:-120} \
		$(BIN)/python -m flows.demo --out $(DEMO_OUT)

test: $(KERNELS)
	$(BIN)/python -m pytest -q

# ruff, then the import contracts in pyproject.toml ([tool.importlinter]): the layers, where torch, tensorflow,
# prefect and ray may be imported. A broken contract names the import that breaks it.
lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache

bench: $(KERNELS)
	$(BIN)/python benchmarks/mutual_information.py
	$(BIN)/python benchmarks/simulate_rate.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .ruff_cache

# Container images built with buildah, no Docker daemon: see containers/README.md. TARGET=scoring (default),
# training or training-tensorflow, GPU=1 for onnxruntime-gpu (and TensorFlow's CUDA build), SIF=1 for the Apptainer
# .sif too, PUSH=REGISTRY (e.g. ghcr.io/zoobot-pipeline) to push REGISTRY/zoobot-pipeline-TARGET:VERSION and :latest.
# image-check runs the scoring image against the host.
.PHONY: images image-check
images:
	containers/build.sh --target $(or $(TARGET),scoring) $(if $(GPU),--gpu) $(if $(SIF),--sif) $(if $(PUSH),--push $(PUSH))

image-check: $(KERNELS)
	containers/build.sh --target scoring
	containers/check_scoring_image.sh
