# The two commands: `make demo` (train + evaluate a small ViR Mask R-CNN on embedded data)
# and `make test`. Both set up .venv first (idempotent; the first run builds mmcv, ~15 min).
PYTHON := .venv/bin/python

.PHONY: setup test demo benchmark

setup:
	bash tools/misc/setup_env.sh

test: setup
	$(PYTHON) -m pytest -q -p no:cacheprovider -n auto --dist loadfile tests

demo: setup
	$(PYTHON) tools/demo.py

benchmark: setup
	$(PYTHON) tools/analysis_tools/benchmark_backbone.py
	$(PYTHON) tools/analysis_tools/benchmark_highres.py
