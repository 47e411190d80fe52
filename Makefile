# Two entry points (see README): `make demo` runs the main job, `make test` the suite.
# Both create .venv and install what they need on a fresh machine.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
RUN_DIR ?= runs/dhn_fashion_mnist_32

.PHONY: demo test setup data bench clean

$(BIN)/tfhash: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test,pretrained,milvus]"
	touch $@

setup: $(BIN)/tfhash data

# Fashion-MNIST ships as the Debian package dataset-fashion-mnist; Open Clip Art
# (the cross-modal open_clip_art protocol) as openclipart-png and openclipart-svg.
# Without apt-get or root they are not installed: a NOTE, and the tests that need
# them are skipped; under CI (CI set, as .ci/run sets it) an error, and those tests
# fail (tests/conftest.py).
DEBIAN_DATA := dataset-fashion-mnist openclipart-png openclipart-svg
data:
	@if { [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || [ -n "$$TFHASH_FASHION_MNIST_DIR" ]; } && \
	    { { [ -d /usr/share/openclipart/png ] && [ -d /usr/share/openclipart/svg ]; } || [ -n "$$TFHASH_OPEN_CLIP_ART_DIR" ]; }; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		(apt-get install -y -q $(DEBIAN_DATA) || (apt-get update -q && apt-get install -y -q $(DEBIAN_DATA))) >/dev/null; \
	elif [ -n "$$CI" ] && [ "$$CI" != false ] && [ "$$CI" != 0 ]; then \
		echo "ERROR: CI (CI=$$CI) needs Fashion-MNIST and Open Clip Art, and cannot install them here (no apt-get," >&2; \
		echo "       or not root). Install the Debian packages $(DEBIAN_DATA) first." >&2; \
		exit 1; \
	else \
		echo "NOTE: Fashion-MNIST or Open Clip Art not found. Install the Debian packages $(DEBIAN_DATA)"; \
		echo "      (sudo apt-get install $(DEBIAN_DATA)), or set TFHASH_FASHION_MNIST_DIR to a"; \
		echo "      directory with its four IDX .gz files (without it tfhash tries keras.datasets, network)"; \
		echo "      and TFHASH_OPEN_CLIP_ART_DIR to a directory holding Open Clip Art's png/ and svg/."; \
	fi

# Main job: DHN, 32 bits, Fashion-MNIST protocol; prints mAP@all, P@100, a query's
# neighbours, and writes the precision-recall plot.
demo: setup
	$(BIN)/tfhash train --recipe dhn_fashion_mnist_32 --output $(RUN_DIR) --overwrite --quiet
	$(BIN)/tfhash evaluate $(RUN_DIR) --protocol fashion_mnist --plot $(RUN_DIR)/precision_recall.png --show $(RUN_DIR)/neighbours.png --json $(RUN_DIR)/metrics.json

# --durations=15: the slowest tests, printed, for the suite's time budget.
test: setup
	$(BIN)/pytest -n 2 --dist loadfile --no-loadscope-reorder -q --durations=15

bench: setup
	$(BIN)/python bench/index.py
	$(BIN)/python bench/methods.py --method dhn --bits 32 64
	$(BIN)/python bench/tables.py

clean:
	rm -rf $(VENV) runs *.egg-info
