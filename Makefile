# Two commands do all the set-up on a fresh machine (see README):
#   make train   # builds .venv if needed, then trains DRQN on StatelessCartPole (minutes on a CPU)
#   make test    # builds .venv if needed, then runs the test suite (what CI runs)
VENV ?= .venv
PYTHON ?= python3
# The CPU build that the team's machines keep on disk; any torch>=2.6 works (e.g. TORCH_SPEC=torch).
TORCH_SPEC ?= torch==2.13.0
TRAIN_YAML ?= tuned_examples/drqn_stateless_cartpole.yaml
PYTEST_ARGS ?= -m "not slow"

.PHONY: train test lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q "$(TORCH_SPEC)"
	$(VENV)/bin/python -m pip install -q -e ".[test]"
	touch $@

train: $(VENV)/.installed
	$(VENV)/bin/rllib train file $(TRAIN_YAML)

test: $(VENV)/.installed
	$(VENV)/bin/ruff check rllib_drqn tests bench
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check rllib_drqn tests bench
	$(VENV)/bin/ruff format --check rllib_drqn tests bench

clean:
	rm -rf $(VENV)
