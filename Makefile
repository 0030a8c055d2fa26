# Every target installs what it needs first; running one twice does no work twice.
VENV   ?= .venv
PY     := $(VENV)/bin/python
CLI    := $(VENV)/bin/fashion-cnn
ARGS   ?=

.PHONY: setup setup-test system-deps test-system-deps cv test docs docs-serve clean-venv bench-speed bench-same-steps bench-job \
        bench-sweep-lr bench-tune-fast bench-contention

# What the jobs need: `make cv` installs this much and no more.
setup: system-deps $(VENV)/.installed

# ...and what the tests need besides: browsers, and the test libraries.
setup-test: setup test-system-deps $(VENV)/.installed-test

# Debian packages: python3-venv (a bare Debian's python3 cannot make a venv without it), the dataset, and a C
# compiler for the baseline's CPU kernel (src/fashion_cnn/conv_pool.c). Without root, the loader downloads
# the data instead and the kernel's work falls back to slower torch ops.
SYSTEM_PACKAGES := python3-venv dataset-fashion-mnist gcc libc6-dev
TEST_PACKAGES   := chromium firefox-esr postgresql

define apt_install
	@missing=""; for p in $(1); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || \
	  missing="$$missing $$p"; done; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "apt-get install$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
endef

system-deps:
	$(call apt_install,$(SYSTEM_PACKAGES))

# Chromium and Firefox ESR for the browser tests, PostgreSQL for the shared-study tests of `tune` (a throw-away
# server per test, tests/postgres.py); without root they are skipped.
test-system-deps:
	$(call apt_install,$(TEST_PACKAGES))

# torch==2.13.0 first: it is the CPU build; a bare `torch` requirement would pull the CUDA one.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[serve,export,tune,tensorboard]'
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# The main job: 5-fold cross-validation of the baseline, then the final model on all training data. ARGS go to
# both, less the options that only mean something in cross-validation (--folds, --split-seed, --val-size,
# --early-stopping), as the `next:` command cv prints leaves them out: `make cv ARGS="--folds 3 --epochs 5"`
# runs `cv --folds 3 --epochs 5`, then `train --epochs 5`. TRAIN_ARGS="..." gives train other options.
CV_ONLY    := --folds --split-seed --val-size --early-stopping
TRAIN_ARGS ?= $(shell skip=; for a in $(ARGS); do if [ -n "$$skip" ]; then skip=; continue; fi; \
                case " $(CV_ONLY) " in (*" $${a%%=*} "*) case "$$a" in (*=*) ;; (*) skip=1;; esac;; \
                (*) printf '%s ' "$$a";; esac; done)

cv: setup
	$(CLI) data
	$(CLI) cv $(ARGS)
	$(CLI) train $(TRAIN_ARGS)

# Two pytest workers (pytest-xdist): on 2 cores one runs while the other waits on a child process, a server,
# a browser or a sleep; worksteal evens out the long tests. ARGS="-n 0" runs them in this process instead.
# Each worker's OpenMP threads then wait for work asleep, not spinning on the core the other worker needs
# (machine.prepare_openmp; no result changes): half the CPU time of a 2-thread training under load.
test: setup-test
	OMP_WAIT_POLICY=passive $(PY) -m pytest -q -n 2 --dist worksteal $(ARGS)

# The documentation site (docs/, mkdocs.yml) into site/; --strict fails on a broken link, anchor or image.
docs: setup $(VENV)/.installed-test
	$(PY) -m mkdocs build --strict

# The same, served at http://127.0.0.1:8000/ and rebuilt on every change.
docs-serve: setup $(VENV)/.installed-test
	$(PY) -m mkdocs serve --strict

# Keras 3 + TensorFlow (CPU build) in a virtualenv of their own: the reference the speed benchmark
# compares against, kept apart so neither stack's libraries or threads leak into the other.
KERAS_VENV ?= .venv-keras
EPOCHS     ?= 3

$(KERAS_VENV)/.installed:
	python3 -m venv $(KERAS_VENV)
	$(KERAS_VENV)/bin/python -m pip install -q --upgrade pip
	$(KERAS_VENV)/bin/python -m pip install -q tensorflow-cpu==2.21.0 keras==3.15.1
	touch $@

# fashion-cnn vs Keras, same split, batch and optimiser: `make bench-speed EPOCHS=10 ARGS="--seeds 5"` for the docs
# (docs/benchmarks/speed-vs-keras.md).
bench-speed: setup $(KERAS_VENV)/.installed
	$(PY) benchmarks/speed_vs_keras.py --epochs $(EPOCHS) --keras-python $(KERAS_VENV)/bin/python $(ARGS)

# fashion-cnn and Keras from the same initial weights through the same batches: the same mathematics?
bench-same-steps: setup $(KERAS_VENV)/.installed
	$(PY) benchmarks/same_steps_as_keras.py $(ARGS)

# The baseline's epoch time with 0, 1 and 2 busy competing processes: default settings, --threads 1, Keras.
bench-contention: setup $(KERAS_VENV)/.installed
	$(PY) benchmarks/contention.py --keras-python $(KERAS_VENV)/bin/python $(ARGS)

# Wall time and peak memory of the whole default job (`make cv`).
bench-job: setup
	$(PY) benchmarks/default_job.py $(ARGS)

# The tutorial's experiment: the baseline at five learning rates, 5-fold cross-validation, 10 epochs each
# (docs/benchmarks/experiments.md); the sweep's table and plots land in runs/<timestamp>-sweep/.
bench-sweep-lr: setup
	$(PY) benchmarks/sweep_lr.py $(ARGS)

# A tune of the fast model's recipe on a fixed 5,000-image validation split: two workers sharing a
# throw-away PostgreSQL study, then the final model (benchmarks/results/tune_fast.json).
bench-tune-fast: setup test-system-deps
	$(PY) benchmarks/tune_fast.py $(ARGS)

clean-venv:
	rm -rf $(VENV)
