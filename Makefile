# The two commands of the README:
#   make run   installs filmless into .venv and starts it with embedded defaults
#   make test  installs the test dependencies (DCMTK, Orthanc, Python packages) and runs the suite
.PHONY: run install test test-fast bench env-example

install:
	bash scripts/install.sh

run: install
	.venv/bin/filmless serve

test:
	bash scripts/install-test-deps.sh
	.venv/bin/python -m pytest

test-fast:
	.venv/bin/python -m pytest -m "not e2e and not slow"

bench:
	.venv/bin/python -m bench.ingest --repeat 3

# .env.example (docker-compose.yml's settings) is generated from filmless's settings; a test
# checks that it is up to date.
env-example:
	.venv/bin/python -m filmless.envdoc > .env.example
