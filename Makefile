# Two commands do all set-up: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel of this release lies on the development machines' disk; on a GPU machine any recent
# torch works: `make TORCH_SPEC=torch test` (or install torch into .venv yourself first).
TORCH_SPEC ?= torch==2.13.0
export TORCHINDUCTOR_CACHE_DIR := $(CURDIR)/.torchinductor

.PHONY: setup test demo demo-model clean-venv

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

setup: $(VENV)/.installed

test: setup
	$(PY) -m pytest -q Testing

demo: setup
	$(PY) -m maediff_core.cli demo -o demo-output

# Rebuilds the bundled demo model from phantoms (about 3 h on 2 cores); see the script.
demo-model: setup
	MAEDIFF="$(VENV)/bin/maediff" ./scripts/demo_model.sh

clean-venv:
	rm -rf $(VENV)
