# Two commands on a fresh machine: `make demo` and `make test`. Both create or reuse .venv idempotently.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUNTIME := $(VENV)/.runtime-installed
TESTDEPS := $(VENV)/.test-installed

.PHONY: setup demo test test-fast bench clean

$(RUNTIME): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $@

# open_clip: the tests' reference tokenizer and the benchmarks' anchor model (bench/openclip_anchor.py); installed
# without deps because its torchvision has no working wheel here. timm: the image tower of open_clip's SigLIP
# models, the reference of tests/test_siglip_models.py (also without deps, for the same torchvision).
$(TESTDEPS): $(RUNTIME)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m pip install --quiet --no-deps 'open_clip_torch==3.3.0'
	$(BIN)/python -m pip install --quiet --no-deps 'timm==1.0.31'
	touch $@

setup: $(RUNTIME)

demo: $(RUNTIME)
	PATH=$(abspath $(BIN)):$$PATH bash scripts/run_distribute.sh 2 configs/demo_shapes.yaml

# Both tiers run on three pytest-xdist workers, one test module per worker at a time (a module's runs share its
# fixtures); much of a test is one-threaded start-up, compilation and waiting on other processes, so on 2 cores a
# third worker fills the time two would leave idle. Modules go out in the order tests/conftest.py sorts them
# (longest first), not xdist's default of most tests first.
XDIST := -n 3 --dist loadfile --no-loadscope-reorder

# Every training worker, job and launcher a test starts imports clip and launcher: compiled to bytecode once here, so
# that with PYTHONDONTWRITEBYTECODE set (this machine, CI) each of them does not compile the sources again.
BYTECODE := $(BIN)/python -m compileall -q -j 0 clip launcher tests

test: $(TESTDEPS)
	$(BYTECODE)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m pytest -q $(XDIST) --durations=25 tests

# The edit-test loop: the tests that start no process and are not heavy (tests/conftest.py), under 3 min on 2 cores.
test-fast: $(TESTDEPS)
	$(BYTECODE)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m pytest -q $(XDIST) --durations=10 -m "not processes and not slow" tests

bench: $(TESTDEPS)
	for b in bench/bench_*.py; do PATH=$(abspath $(BIN)):$$PATH $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) runs output
