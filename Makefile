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

# A torch already installed for $(PYTHON) (e.g. a CUDA build on a GPU machine) is reused through
# --system-site-packages; otherwise the venv gets $(TORCH_SPEC).
TORCH_SPEC ?= torch==2.13.0

$(STAMP): setup.py Makefile
	if $(PYTHON) -c "import torch" 2>/dev/null; then $(PYTHON) -m venv --system-site-packages $(VENV); \
	else $(PYTHON) -m venv $(VENV); fi
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q $(OPENPOINTS_DEPS) $(OUR_DEPS)
	$(PY) -m pip install -q --no-deps openpoints==0.1.2
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: setup
	$(PY) tools/distill.py --cfg cfgs/distill/demo.yaml

test: setup
	$(PY) -m pytest -q -p no:cacheprovider tests

clean-venv:
	rm -rf $(VENV)
