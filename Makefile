# Every target installs what it needs into .venv/ first; nothing is installed by hand.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
BUF := .tools/node_modules/.bin/buf
PROTOS := $(wildcard protos/flowsvc/v1/*.proto)

.PHONY: install run test bench proto lint fuzz clean contract-baseline

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
	rm -f generated/flowsvc/v1/*_pb2*.py generated/flowsvc/v1/*_pb2*.pyi generated/flowsvc/v1/descriptors.binpb
	$(PY) -m grpc_tools.protoc -Iprotos \
	  --plugin=protoc-gen-mypy=$(VENV)/bin/protoc-gen-mypy \
	  --plugin=protoc-gen-mypy_grpc=$(VENV)/bin/protoc-gen-mypy_grpc \
	  --python_out=generated --grpc_python_out=generated \
	  --mypy_out=generated --mypy_grpc_out=generated $(PROTOS)
	# The contract with its comments, served by reflection (src/flowsvc/api/reflection.py).
	$(PY) -m grpc_tools.protoc -Iprotos --include_imports --include_source_info \
	  --descriptor_set_out=generated/flowsvc/v1/descriptors.binpb $(PROTOS)

fuzz: install
	FLOWSVC_FUZZ_EXAMPLES=$${FLOWSVC_FUZZ_EXAMPLES:-2000} $(PY) -m pytest tests/test_bad_input.py

lint: install $(BUF)
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/mypy src
	$(BUF) lint
	@# The contract may grow but not break: compare with the released one, committed as an
	@# image so that it works in any clone (shallow, detached, on main itself). See README.
	$(BUF) breaking --against contract/baseline.binpb

# Run when a contract change is released (merged to main), and commit the image with it.
contract-baseline: $(BUF)
	$(BUF) build -o contract/baseline.binpb

clean:
	rm -rf $(VENV) .tools
