# Two commands on a fresh clone: `make demo` (the main job, offline) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BUILD ?= build

.PHONY: demo paper site test lint unit unit-all notebooks-smoke mutants gpu-carry clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[notebooks,dev]'
	touch $(STAMP)

demo: $(STAMP)  ## every notebook in the demo profile (embedded digits dataset, CPU, minutes)
	$(PY) scripts/run_notebooks.py --profile demo --allow-train

paper: $(STAMP)  ## every notebook in the paper profile (downloads, GPU)
	$(PY) scripts/run_notebooks.py --profile paper --allow-train --download

site: $(STAMP)  ## static HTML of every executed page and a front page of findings, in build/site/ (seconds; no training)
	$(PY) scripts/build_site.py --out $(BUILD)/site

lint: $(STAMP)
	$(VENV)/bin/ruff check demhec tests scripts benchmarks

# -p tests.skips_fail_in_ci: with DEMHEC_FAIL_ON_SKIP=1 (CI) a skipped test fails the run, saying why.
# Tests run on TEST_WORKERS processes (pytest-xdist), each file on one of them (a module's fixtures
# and a notebook's cells stay together); each test holds one torch thread, so two workers use the
# two cores that CI has. TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= 2
XDIST := -n $(TEST_WORKERS) --dist loadfile

unit: $(STAMP)
	$(PY) -m pytest -q $(XDIST) -p tests.skips_fail_in_ci -m "not expensive" tests

unit-all: $(STAMP)  ## every unit test, the expensive ones too (minutes more)
	$(PY) -m pytest -q $(XDIST) -p tests.skips_fail_in_ci tests

# One torch thread per kernel: two threads on a busy 2-core machine ran the notebooks up to 8 times
# slower than idle (see tests/conftest.py and benchmarks/thread_load.py).
notebooks-smoke: $(STAMP)  ## nbval over every notebook, parameters injected for the smoke profile
	rm -rf $(BUILD)/nbval $(BUILD)/smoke
	$(PY) scripts/run_notebooks.py --profile smoke --prepare-only --allow-train --out $(BUILD)/nbval \
		--results-dir $(BUILD)/smoke/results --figures-dir $(BUILD)/smoke/figures
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest -q $(XDIST) -p no:cacheprovider -p tests.nbval_figures -p tests.skips_fail_in_ci --nbval-lax $(BUILD)/nbval

test: lint unit notebooks-smoke

mutants: $(STAMP)  ## named mutations of the selection, adaptation, control and loss code: which the tests catch (minutes; report in docs/mutants.md)
	$(PY) scripts/mutants.py

gpu-carry: $(STAMP)  ## what scripts/gpu_reproduction.sh needs on the device (development machines only)
	mkdir -p .gpu_carry
	cp ../shared/data/cifar10-jpeg-train.tar.gz .gpu_carry/
	$(PY) -m pip download --quiet --no-deps -d .gpu_carry imagecorruptions-imaug==1.1.5
	git rev-parse HEAD > .gpu_carry/COMMIT
	$(PY) scripts/gpu_reproduction.py --check-travel --carry .gpu_carry

clean:
	rm -rf $(BUILD) .pytest_cache .ruff_cache
