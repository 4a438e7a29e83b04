# hkfs: the two set-up commands of the README are `make run` and `make test`.
# Everything runs in this checkout's own virtual environment (.venv).
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
DEMO_STORE ?= demo-store
DEMO_MNT ?= demo-mnt

.PHONY: setup run test bench lint umount clean

setup:
	bash scripts/setup.sh

## Mount a store with demo data (made on first run) at ./demo-mnt.
run: setup
	hk demo --store $(DEMO_STORE) --mountpoint $(DEMO_MNT)

## Unmount the demo mount (fails, saying why, when it cannot).
umount:
	hk umount $(DEMO_MNT)

## Install what is missing, then run the whole suite (real FUSE mounts included).
test: setup
	$(PY) -m pytest -q --timeout=600

## Benchmarks: tables and plots under docs/bench/.
bench: setup
	HKFS_EXTRAS=test,fast,bench,faiss HKFS_REINSTALL=1 bash scripts/setup.sh
	$(PY) scripts/bench_catalog.py
	$(PY) scripts/bench_mount.py
	$(PY) scripts/bench_vecindex.py
	$(PY) scripts/bench_query.py

## ruff comes with the dev extra, installed here on first use.
lint:
	HKFS_EXTRAS=test,fast,dev bash scripts/setup.sh
	$(PY) -m ruff check hkfs vecindex scripts tests

clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache .hypothesis
