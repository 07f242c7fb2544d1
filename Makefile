# Two entry points (see README): `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch 2.13.0 is the CPU wheel on these machines; openpoints goes in with --no-deps because its
# declared torchvision requirement would otherwise pull a multi-GB CUDA torch.
OPENPOINTS_DEPS := numpy scipy pyyaml multimethod termcolor shortuuid scikit-learn tqdm easydict h5py
OUR_DEPS := safetensors matplotlib pytest

.PHONY: setup demo test clean-venv

setup: $(STAMP)

$(STAMP): setup.py Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q $(OPENPOINTS_DEPS) $(OUR_DEPS)
	$(PY) -m pip install -q --no-deps openpoints==0.1.2
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: setup
	$(PY) tools/distill.py --cfg cfgs/distill/demo.yaml

test: setup
	$(PY) -m pytest -q tests

clean-venv:
	rm -rf $(VENV)
