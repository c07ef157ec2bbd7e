.PHONY: check test lint docs
check: lint test
lint:
	ruff check . && ruff format --check .
test:
	pytest -q
docs:
	mkdocs build --strict
