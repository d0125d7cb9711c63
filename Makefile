# `make demo` and `make test` work on a fresh clone with nothing installed: each creates
# .venv when missing, installs the project with what its tests need, then runs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SHARED_DATA := $(abspath ../shared/data)

# Real data sets beside the checkout are used instead of downloading them.
ifneq ($(wildcard $(SHARED_DATA)),)
export MODELYARD_DATA_DIR ?= $(SHARED_DATA)
endif

.PHONY: install demo test bench clean

$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@# torch first and pinned: its CPU build lies on these machines; a range pulls a multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/modelyard run examples/adult.yaml

test: install
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs .modelyard .pytest_cache
