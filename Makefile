# Two commands: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
OUT    ?= results/demo
# A machine without an NVIDIA GPU gets the small CPU-only TensorFlow wheel; elsewhere (Colab,
# GPU boxes) the regular `tensorflow`. Override with `make TF_EXTRA=tensorflow ...`.
TF_EXTRA ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo tensorflow || echo cpu)
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: demo test install install-dev bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e ".[$(TF_EXTRA)]"
	touch $@

# One pip resolve for everything the tests need (the runtime install is part of it).
# tensorflow-serving-api (request protos for the serving tests) declares a dependency on the
# full `tensorflow` wheel; --no-deps keeps a second TensorFlow from landing next to ours.
$(VENV)/.installed-dev: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e ".[$(TF_EXTRA),dev,export,backends]"
	$(BIN)/pip install -q --no-deps "tensorflow-serving-api>=2.16"
	touch $(VENV)/.installed $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: $(VENV)/.installed
	$(BIN)/zf-unet demo --out $(OUT) --overwrite

# The tests run in TEST_WORKERS processes (pytest-xdist), a test module per process at a time,
# so that a module's shared fixtures are built once. TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= 2
test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadscope) $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) results .pytest_cache .hypothesis
