"""The contract: generated code is current and importable, the protos pass buf lint."""

from __future__ import annotations

import filecmp
import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GENERATED = ROOT / "generated" / "flowsvc" / "v1"
PROTOS = sorted((ROOT / "protos" / "flowsvc" / "v1").glob("*.proto"))
GENERATED_MODULES = sorted(p.stem for p in GENERATED.glob("*.py") if p.stem != "__init__")


def test_every_proto_has_generated_code() -> None:
    for proto in PROTOS:
        assert f"{proto.stem}_pb2" in GENERATED_MODULES
        assert f"{proto.stem}_pb2_grpc" in GENERATED_MODULES
        assert (GENERATED / f"{proto.stem}_pb2.pyi").exists()


@pytest.mark.parametrize("module", GENERATED_MODULES)
def test_generated_module_imports_as_flowsvc_v1(module: str) -> None:
    loaded = importlib.import_module(f"flowsvc.v1.{module}")
    assert Path(loaded.__file__ or "").parent == GENERATED


def test_generated_code_matches_the_protos(tmp_path: Path) -> None:
    venv_bin = Path(sys.executable).parent
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{ROOT / 'protos'}",
            f"--plugin=protoc-gen-mypy={venv_bin / 'protoc-gen-mypy'}",
            f"--plugin=protoc-gen-mypy_grpc={venv_bin / 'protoc-gen-mypy_grpc'}",
            f"--python_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            f"--mypy_out={tmp_path}",
            f"--mypy_grpc_out={tmp_path}",
            *map(str, PROTOS),
        ],
        check=True,
        capture_output=True,
    )
    fresh = tmp_path / "flowsvc" / "v1"
    names = sorted(p.name for p in fresh.iterdir())
    committed = sorted(
        p.name
        for p in GENERATED.iterdir()
        # descriptors.binpb has its own check (tests/test_cli.py, the descriptor set test).
        if p.name not in {"__init__.py", "py.typed", "__pycache__", "descriptors.binpb"}
    )
    assert names == committed, "run `make proto` and commit generated/"
    _, mismatch, errors = filecmp.cmpfiles(fresh, GENERATED, names, shallow=False)
    assert not mismatch and not errors, (
        f"stale generated files {mismatch + errors}: run `make proto`"
    )


def test_protos_pass_buf_lint() -> None:
    buf = shutil.which("buf") or str(ROOT / ".tools" / "node_modules" / ".bin" / "buf")
    assert Path(buf).exists(), (
        "buf is missing: run the suite through `make test`, which installs it"
    )
    result = subprocess.run([buf, "lint"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
