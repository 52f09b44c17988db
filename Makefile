# llm-lifecycle: `make all` runs the embedded tiny recipe end to end; `make test` runs the tests.
# RECIPE picks the recipe; ARGS passes dotted overrides, e.g. make sft ARGS="sft.max_steps=50".
RECIPE ?= recipes/tiny.yaml
ARGS ?=
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
LIFECYCLE := $(BIN)/lifecycle
# CPU machines take the CPU wheel of torch (a plain `torch` would pull a multi-GB CUDA build);
# machines with an NVIDIA driver take the CUDA build the range in pyproject.toml allows.
TORCH_SPEC ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo 'torch>=2.4,<2.15' || echo 'torch==2.13.0')
export DS_ACCELERATOR ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo cuda || echo cpu)
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install test test-slow tokenizer pretrain sft rm rl all plan status chat serve report rollouts rank bench clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

install: $(BIN)/.installed

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

test-slow: install
	$(BIN)/python -m pytest -q -m slow

tokenizer pretrain sft rm rl: install
	$(LIFECYCLE) run $(RECIPE) --stages $@ $(ARGS)

all: install
	$(LIFECYCLE) run $(RECIPE) $(ARGS)
	$(LIFECYCLE) report $(RECIPE) $(ARGS)

plan status report: install
	$(LIFECYCLE) $@ $(RECIPE) $(ARGS)

rollouts rank: install
	$(LIFECYCLE) $@ $(RECIPE) $(ARGS)

chat: install
	$(LIFECYCLE) chat $${CKPT:-runs/tiny/rl}

serve: install
	$(LIFECYCLE) serve $${CKPT:-runs/tiny/sft runs/tiny/rl}

bench: install
	$(BIN)/python bench/pretrain_loop.py
	$(BIN)/python bench/rl_step.py

clean:
	rm -rf runs

# Any other target names a stage of the recipe (`make mid`, `make dpo`): run it and what it needs.
.DEFAULT:
	@$(MAKE) --no-print-directory install
	$(LIFECYCLE) run $(RECIPE) --stages $@ $(ARGS)
