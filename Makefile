# Two commands do all set-up: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel of this release lies on the development machines' disk; on a GPU machine any recent
# torch works: `make TORCH_SPEC=torch test` (or install torch into .venv yourself first).
TORCH_SPEC ?= torch==2.13.0
export TORCHINDUCTOR_CACHE_DIR := $(CURDIR)/.torchinductor
# Slicer releases the module supports; each has a test Python pinned to what it bundles.
SLICER_RELEASES := 5.10 5.12
MODULE_SOURCES := scripts/build_slicer_module.py $(shell git ls-files MAEDiffAnomaly maediff_core Resources/atlas Resources/models Resources/samples)

.PHONY: setup lint test test-core test-slicer test-simpleitk23 demo demo-model sample slicer-module \
	slicer-module-offline install-footprint clean-venv

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

setup: $(VENV)/.installed

# The folder a user adds to Slicer (and its zip): the module with the core vendored into it.
slicer-module: dist/MAEDiffAnomaly.zip
dist/MAEDiffAnomaly.zip: $(MODULE_SOURCES)
	$(PYTHON) scripts/build_slicer_module.py dist

# The same with a wheels/ folder for hospitals without internet: the first Detect installs ONNX
# Runtime from it, for Slicer on Windows, macOS (arm64, x86-64) and Linux (91 MB more).
slicer-module-offline: dist/offline/MAEDiffAnomaly.zip
dist/offline/MAEDiffAnomaly.zip: $(MODULE_SOURCES)
	$(PYTHON) scripts/build_slicer_module.py dist/offline --wheels slicer

# The tests' module: offline, with the wheels of this machine's Python.
build/offline-here/MAEDiffAnomaly.zip: $(MODULE_SOURCES)
	$(PYTHON) scripts/build_slicer_module.py build/offline-here --wheels here

# Megabytes downloaded and on disk at the first Detect: ONNX Runtime against the PyTorch extension's path.
install-footprint: setup
	$(PY) scripts/install_footprint.py

# A Python like a fresh Slicer <release>'s, without the PyTorch extension (torch and MONAI not installed
# and blocked from import: Testing/slicer_env/without-torch.pth): its bundled packages at their versions,
# the MRML library (slicer-core, without vtk's matplotlib, which Slicer does not ship) and pytest to run
# the tests. The tests' first Detect installs ONNX Runtime from the module's wheels.
.venv-slicer-%/.installed: Testing/slicer_env/slicer-%.txt Testing/slicer_env/without-torch.pth Makefile
	rm -rf .venv-slicer-$*
	$(PYTHON) -m venv .venv-slicer-$*
	cp Testing/slicer_env/without-torch.pth \
	  "$$(.venv-slicer-$*/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"
	.venv-slicer-$*/bin/python -m pip install --quiet -r Testing/slicer_env/slicer-$*.txt
	.venv-slicer-$*/bin/python -m pip install --quiet --no-deps slicer-core vtk==9.6.2
	.venv-slicer-$*/bin/python -m pip install --quiet pytest
	touch $@

# SimpleITK 2.3 (Slicer 5.6/5.8's generation) for the registration, which must not depend on 2.4's API.
.venv-simpleitk23/.installed: Makefile
	rm -rf .venv-simpleitk23
	$(PYTHON) -m venv .venv-simpleitk23
	.venv-simpleitk23/bin/python -m pip install --quiet "SimpleITK==2.3.1" "numpy<2" pytest
	touch $@

# ruff with the configuration in pyproject.toml: style, bugbear, complexity, import order.
lint: setup
	$(PY) -m ruff check .

# One worker per core (at most 4), each with its share of the cores' threads (Testing/conftest.py):
# torch's and ITK's own threads leave cores idle in the suite's Python, file and process work (on 2
# cores, the same tests took 925 s in one process and 721 s in two).
test-core: setup
	$(PY) -m pytest -q -n auto --maxprocesses 4 Testing

# The module as a user installs it: the zip (offline, with this machine's wheels), unpacked.
test-slicer: build/offline-here/MAEDiffAnomaly.zip $(SLICER_RELEASES:%=.venv-slicer-%/.installed)
	rm -rf build/slicer-module && $(PYTHON) -m zipfile -e build/offline-here/MAEDiffAnomaly.zip build/slicer-module
	cd Testing/slicer_env && for release in $(SLICER_RELEASES); do \
	  MAEDIFF_MODULE_DIR=$(CURDIR)/build/slicer-module/MAEDiffAnomaly MAEDIFF_SLICER_RELEASE=$$release \
	  $(CURDIR)/.venv-slicer-$$release/bin/python -m pytest -q . || exit 1; \
	done

test-simpleitk23: .venv-simpleitk23/.installed
	cd Testing/simpleitk23 && $(CURDIR)/.venv-simpleitk23/bin/python -m pytest -q .

# Every test Python is set up first, side by side (each set-up is one pip process, mostly waiting on
# downloads and unpacking), then the suites run one after the other.
test:
	$(MAKE) -j4 setup .venv-simpleitk23/.installed $(SLICER_RELEASES:%=.venv-slicer-%/.installed) \
	  build/offline-here/MAEDiffAnomaly.zip
	$(MAKE) lint test-core test-simpleitk23 test-slicer

demo: setup
	$(PY) -m maediff_core.cli demo -o demo-output

# The bundled sample (Resources/samples): the tumour phantom of maediff_core.demo.SAMPLE_SEED.
sample: setup
	$(PY) -c "from maediff_core.demo import write_sample; print(*write_sample('Resources/samples'))"

# Rebuilds the bundled demo model from phantoms (about 6 h on 2 cores); see the script.
demo-model: setup
	MAEDIFF="$(VENV)/bin/maediff" ./scripts/demo_model.sh

clean-venv:
	rm -rf $(VENV) .venv-slicer-* .venv-simpleitk23
