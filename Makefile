# Two commands for a fresh machine (see README.md):
#   make demo   convert a bundled example model and print its verification report
#   make test   run the test suite
# Each creates (or reuses) a virtual environment in .venv inside the checkout.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Extra pytest arguments, e.g. `make test PYTEST_ARGS="-m exporters"`.
PYTEST_ARGS ?=

.PHONY: demo test venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@# setuptools' editable build prints an informational notice (not a deprecation) about
	@# folders named like our packages in the working directory; the entry points guard against
	@# exactly that (mha2sha/_own_packages.py), so the notice is not shown.
	PYTHONWARNINGS='ignore:Editable installation' $(PY) -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) -m mha2sha demo --output demo_out

test: $(STAMP)
	$(PY) -m pytest -n 2 $(PYTEST_ARGS)

clean:
	rm -rf demo_out .pytest_cache .hypothesis
