# The two commands a newcomer needs (see README.md):
#   make demo   install, then run the job on its embedded default (local Ray, sample corpus, tiny model)
#   make test   install with test tools, then run the whole test suite
PY := .venv/bin/python

.PHONY: demo test install install-test bench

install:
	@scripts/install.sh

install-test:
	@scripts/install.sh --test

demo: install
	$(PY) -m batch demo

test: install-test
	$(PY) -m pytest

bench: install-test
	$(PY) benchmarks/throughput.py
