# Every target installs what it needs into .venv/ first; nothing is installed by hand.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
BUF := .tools/node_modules/.bin/buf
PROTOS := $(wildcard protos/flowsvc/v1/*.proto)

.PHONY: install run test bench proto lint fuzz clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[server,dev]'
	touch $(STAMP)

install: $(STAMP)

$(BUF):
	mkdir -p .tools && cd .tools && npm install --silent --no-audit --no-fund --prefix . @bufbuild/buf@1 >/dev/null

run: install
	@echo "flowsvc: mint a key for local use with:  $(PY) -m flowsvc keys create --org my-org"
	$(PY) -m flowsvc serve

test: install $(BUF)
	PATH="$(CURDIR)/.tools/node_modules/.bin:$$PATH" $(PY) -m pytest

bench: install
	$(PY) bench/run.py $(BENCH_ARGS)

proto: install
	rm -f generated/flowsvc/v1/*_pb2*.py generated/flowsvc/v1/*_pb2*.pyi
	$(PY) -m grpc_tools.protoc -Iprotos \
	  --plugin=protoc-gen-mypy=$(VENV)/bin/protoc-gen-mypy \
	  --plugin=protoc-gen-mypy_grpc=$(VENV)/bin/protoc-gen-mypy_grpc \
	  --python_out=generated --grpc_python_out=generated \
	  --mypy_out=generated --mypy_grpc_out=generated $(PROTOS)

fuzz: install
	FLOWSVC_FUZZ_EXAMPLES=$${FLOWSVC_FUZZ_EXAMPLES:-2000} $(PY) -m pytest tests/test_bad_input.py

lint: install $(BUF)
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/mypy src
	$(BUF) lint

clean:
	rm -rf $(VENV) .tools
