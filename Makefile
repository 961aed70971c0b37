# ltdet: `make demo` and `make test` set everything up on first use.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ltdet-setup
DEMO_CONFIG ?= configs/synthetic/faster_rcnn_softmax.yaml
DEMO_OUT ?= output/demo
SEED ?= 0

.PHONY: setup data demo test test-slow bench clean-output

setup: $(STAMP)

# torch/torchvision first (from the local wheels), then detectron2's Python sources with
# the ops stand-in when no detectron2 is importable, then ltdet in editable mode.
$(STAMP): setup.py tools/install_detectron2.py ltdet/compat/detectron2_c_stub.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip<26" "setuptools<81" wheel
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1 "numpy>=1.21,<1.24" "Pillow>=8,<10"
	$(PY) tools/install_detectron2.py
	$(PY) -m pip install --quiet --no-build-isolation -e ".[test]"
	$(PY) -c "import ltdet, detectron2.modeling; print('ltdet set up')"
	touch $(STAMP)

data: $(STAMP)
	$(PY) -m ltdet.data.synthetic --seed $(SEED)

demo: data
	$(PY) train_net.py --config-file $(DEMO_CONFIG) OUTPUT_DIR $(DEMO_OUT)

test: $(STAMP)
	$(PY) -m pytest tests -q

test-slow: $(STAMP)
	$(PY) -m pytest tests -q -m slow

bench: $(STAMP)
	$(PY) bench/two_stage_loss_speed.py
	$(PY) bench/dense_loss_speed.py
	$(PY) bench/hook_overhead.py
	$(PY) bench/config_iteration_time.py
	$(PY) bench/lvis_eval_speed.py

clean-output:
	rm -rf output
