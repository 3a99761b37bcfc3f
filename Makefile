# Two entry points (see README): `make demo` and `make test`.
# Both build their own virtual environment from pyproject.toml on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The suite waits on sockets and subprocesses far more than it computes: more workers than cores pay.
# loadfile: a module's tests share its module-scoped fixtures (an emulator, deployments on the
# real Prefect server), so each module runs whole on one worker.
TEST_WORKERS ?= 4

.PHONY: demo test clean

# One line per step; pip's own output only when something goes wrong (errors are never hidden).
$(STAMP): pyproject.toml
	@echo "Installing xnat-flows and its test dependencies into $(VENV)/ (first run only: a few minutes)."
	@$(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --upgrade pip
	@$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)
	@echo "Installed: $(BIN)/xnat-flows"

demo: $(STAMP)
	@$(BIN)/xnat-flows demo

test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
