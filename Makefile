# The two commands a new machine needs: `make demo` (the main job, embedded defaults) and
# `make test` (every test tier, with the real services it talks to).
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch on the CPU runs the torch operators' CPU paths in the tests (preprocess.torch, torch tensors
# into Triton). pip takes a local CPU wheel where PIP_FIND_LINKS has one; from PyPI on Linux it
# is the CUDA build (~2.5 GB). `make test FG_TORCH=0` leaves it out (those tests then skip).
# onnx2torch goes in without its dependencies: it asks for torchvision, which would pull the CUDA
# torch, and framegraph loads it without torchvision (operators/onnx_convert.py).
# scripts/triton reads FG_TORCH too: torch in the Triton server's venv serves centerface_torch.
FG_TORCH ?= 1
TORCH_SPEC ?= torch==2.13.0
ONNX_SPEC ?= onnx==1.23.2
ONNX2TORCH_SPEC ?= onnx2torch==1.5.15
export FG_TORCH TORCH_SPEC

.PHONY: install services stop-services demo test unit lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	if [ "$(FG_TORCH)" != 0 ]; then $(BIN)/pip install -q '$(TORCH_SPEC)' $(ONNX_SPEC) \
	  && $(BIN)/pip install -q --no-deps $(ONNX2TORCH_SPEC); fi
	touch $(STAMP)

install: $(STAMP)

services: install
	scripts/ci_deps.sh
	scripts/services start

stop-services:
	scripts/services stop

demo: install
	$(BIN)/python scripts/demo.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check engine operators tests loadtests
	$(BIN)/mypy

unit: install
	$(BIN)/pytest tests/unit -q

test: services lint
	$(BIN)/pytest tests -q

bench: install
	$(BIN)/python loadtests/decode_ratio.py

clean:
	rm -rf out .pytest_cache .mypy_cache .ruff_cache
