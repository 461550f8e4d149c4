# Two commands on a fresh clone: `make demo` (the main job, offline) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BUILD ?= build

.PHONY: demo paper test lint unit unit-all notebooks-smoke gpu-carry clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[notebooks,dev]'
	touch $(STAMP)

demo: $(STAMP)  ## every notebook in the demo profile (embedded digits dataset, CPU, minutes)
	$(PY) scripts/run_notebooks.py --profile demo --allow-train

paper: $(STAMP)  ## every notebook in the paper profile (downloads, GPU)
	$(PY) scripts/run_notebooks.py --profile paper --allow-train --download

lint: $(STAMP)
	$(VENV)/bin/ruff check demhec tests scripts benchmarks

unit: $(STAMP)
	$(PY) -m pytest -q -m "not expensive" tests

unit-all: $(STAMP)  ## every unit test, the expensive ones too (minutes more)
	$(PY) -m pytest -q tests

notebooks-smoke: $(STAMP)  ## nbval over every notebook, parameters injected for the smoke profile
	rm -rf $(BUILD)/nbval $(BUILD)/smoke
	$(PY) scripts/run_notebooks.py --profile smoke --prepare-only --allow-train --out $(BUILD)/nbval \
		--results-dir $(BUILD)/smoke/results --figures-dir $(BUILD)/smoke/figures
	$(PY) -m pytest -q -p no:cacheprovider -p tests.nbval_figures --nbval-lax $(BUILD)/nbval

test: lint unit notebooks-smoke

gpu-carry: $(STAMP)  ## what scripts/gpu_reproduction.sh needs on the device (development machines only)
	mkdir -p .gpu_carry
	cp ../shared/data/cifar10-jpeg-train.tar.gz .gpu_carry/
	$(PY) -m pip download --quiet --no-deps -d .gpu_carry imagecorruptions-imaug==1.1.5
	git rev-parse HEAD > .gpu_carry/COMMIT

clean:
	rm -rf $(BUILD) .pytest_cache .ruff_cache
