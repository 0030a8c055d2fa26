# Every target installs what it needs first; running one twice does no work twice.
VENV   ?= .venv
PY     := $(VENV)/bin/python
CLI    := $(VENV)/bin/fashion-cnn
ARGS   ?=

.PHONY: setup system-deps cv test clean-venv bench-speed bench-same-steps bench-job bench-contention

setup: system-deps $(VENV)/.installed

# Debian packages: the dataset, a C compiler for the baseline's CPU kernel (src/fashion_cnn/conv_pool.c), and
# Chromium and Firefox ESR for the browser tests. Without root, the loader downloads the data instead, the
# kernel's work falls back to slower torch ops, and the browser tests are skipped.
system-deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	   { [ ! -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ] || ! command -v cc >/dev/null || \
	     ! command -v chromium >/dev/null || ! command -v firefox-esr >/dev/null; }; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist gcc libc6-dev \
	    chromium firefox-esr >/dev/null; \
	fi

# torch==2.13.0 first: it is the CPU build; a bare `torch` requirement would pull the CUDA one.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# The main job: 5-fold cross-validation of the baseline, then the final model on all training data.
cv: setup
	$(CLI) data
	$(CLI) cv $(ARGS)
	$(CLI) train $(ARGS)

test: setup
	$(PY) -m pytest -q $(ARGS)

# Keras 3 + TensorFlow (CPU build) in a virtualenv of their own: the reference the speed benchmark
# compares against, kept apart so neither stack's libraries or threads leak into the other.
KERAS_VENV ?= .venv-keras
EPOCHS     ?= 3

$(KERAS_VENV)/.installed:
	python3 -m venv $(KERAS_VENV)
	$(KERAS_VENV)/bin/python -m pip install -q --upgrade pip
	$(KERAS_VENV)/bin/python -m pip install -q tensorflow-cpu==2.21.0 keras==3.15.1
	touch $@

# fashion-cnn vs Keras, same split, batch and optimiser: `make bench-speed EPOCHS=10 ARGS="--seeds 5"` for the README.
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

clean-venv:
	rm -rf $(VENV)
