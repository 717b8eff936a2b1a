# The two commands a newcomer needs (see README.md):
#   make demo   install, then fine-tune the tiny model on the sample corpus and tag its held-out split with base and fine-tune
#   make test   install with test tools, then run the whole test suite
PY := .venv/bin/python

.PHONY: demo test install install-test bench bench-finetune

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

bench-finetune: install-test
	$(PY) benchmarks/finetune.py
