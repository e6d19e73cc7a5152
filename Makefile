# The two commands of the README, plus benchmarks. Each sets up what it needs first.
.PHONY: run test bench lint

run:
	scripts/setup.sh
	.venv/bin/legend demo
	scripts/serve.sh

test:
	scripts/test.sh

bench:
	scripts/setup.sh
	.venv/bin/python -m bench

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check .
