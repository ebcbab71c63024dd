PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SLOW_STAMP := $(VENV)/.installed-slow

.PHONY: test test-slow demo generated bench lint clean

# --no-compile: Python compiles the modules it imports on first use; compiling all of
# SymPy and matplotlib up front doubled the time of the set-up.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-compile -e '.[test,demo,notebook]'
	touch $(STAMP)

# test: the suite within five minutes; test-slow: the tests marked slow (seconds of waiting
# each, or thousands of examples: the README's examples, the wheel, the notebook, check's time
# limits, torchrun, the spec fuzzer, the proof grid, the jax backend), which .ci/run runs
# after it; it installs the `slow` extra first (jax, scikit-learn)
test: $(STAMP)
	$(BIN)/ruff check symgrad tests benchmarks generated
	$(BIN)/python -m pytest -n auto --dist loadfile -m "not slow"

$(SLOW_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-compile -e '.[test,demo,notebook,slow]'
	touch $(SLOW_STAMP)

test-slow: $(SLOW_STAMP)
	$(BIN)/python -m pytest -n auto --dist loadfile -m slow

demo: $(STAMP)
	$(BIN)/symgrad demo --out demo-out

generated: $(STAMP)
	for spec in examples/*.toml; do $(BIN)/symgrad generate $$spec --force || exit 1; done

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check symgrad tests benchmarks generated
	$(BIN)/ruff format --check generated

clean:
	rm -rf $(VENV) demo-out build dist
