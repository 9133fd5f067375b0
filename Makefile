# Quick start: `make test` (lint + tests). Everything is installed into .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: install lint test test-faults bench demo clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# Whole workers killed, frozen and stopped at default lease settings (minutes; CI runs it after `make test`).
test-faults: install
	$(VENV)/bin/pytest -m faults $(PYTEST_ARGS)

bench: install
	$(PY) benchmarks/encoders.py --json benchmarks/encoders.json

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info demo

demo: install
	rm -rf demo
	$(VENV)/bin/lstmdet data digits-det demo/scenes --images 24 --seed 5 --split test
	$(VENV)/bin/lstmdet detect demo/scenes/images --out demo/detections --save-images --agnostic-nms
	@echo "annotated images: demo/detections/images/  COCO files: demo/detections/{images,coco_results}.json"
