.PHONY: check test lint
check: lint test
lint:
	ruff check . && ruff format --check .
test:
	pytest -q
