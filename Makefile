# Two commands on a fresh clone: `make train` (the main job) and `make test` (the test suite;
# `make test-fast` for the quick tier before a commit).
# Both create the virtual environment $(VENV) and install the package with its [dev] extras when
# it is missing or pyproject.toml changed. Managing your own environment instead:
#   pip install -e ".[dev]" && mnist-addition train && python -m pytest -q
# Offline (no download of MNIST): make train DATA=path/to/mnist (a folder holding MNIST/raw/*-ubyte).

PYTHON ?= python3
VENV ?= .venv
DATA ?=
ARGS ?=
PY := $(VENV)/bin/python

.PHONY: train test test-fast install clean-venv

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -c "import torch, accelerate, ray; print('torch', torch.__version__, '| accelerate', accelerate.__version__, '| ray', ray.__version__)"
	touch $@

# The main job: train the default model on MNIST (downloaded to ~/.cache/mnist-addition unless DATA).
train: install
	$(PY) -m mnist_addition train $(if $(DATA),--data-dir $(DATA)) $(ARGS)

# The tests. pytest exits 5 when it collected no test: that is a failure here.
test: install
	@$(PY) -m pytest -q $(ARGS); code=$$?; \
	if [ $$code -eq 5 ]; then echo "make test: pytest collected no tests; failing." >&2; exit 1; fi; exit $$code

# The tests a person runs before a commit (about 2 minutes on 2 cores): all but those marked slow
# (multi-process launches, Ray clusters, compilation, the wheel build). `make test` runs everything.
test-fast: install
	@$(PY) -m pytest -q -m "not slow" $(ARGS); code=$$?; \
	if [ $$code -eq 5 ]; then echo "make test-fast: pytest collected no tests; failing." >&2; exit 1; fi; exit $$code

clean-venv:
	rm -rf $(VENV)
