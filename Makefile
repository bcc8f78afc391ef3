.PHONY: setup test
setup:
	bash tools/setup_env.sh
test: setup
	.venv/bin/python -m pytest -q tests
