"""The built wheel holds every module: a non-editable install works, not just the checkout."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _source_packages() -> set[str]:
    src = ROOT / "src"
    return {
        ".".join(init.parent.relative_to(src).parts)
        for init in src.rglob("__init__.py")
        if "migrations" not in init.parts or init.parent.name in ("migrations", "versions")
    }


def test_every_source_package_is_listed_for_the_wheel() -> None:
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    assert _source_packages() | {"flowsvc.v1"} == listed


def test_the_built_wheel_imports_every_module(tmp_path: Path) -> None:
    # Built from a copy: a build/ directory left in the checkout would fill the gaps.
    tree = tmp_path / "tree"
    skip = shutil.ignore_patterns(".git", ".venv", ".tools", "build", "var", "*.egg-info")
    shutil.copytree(ROOT, tree, ignore=skip)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(tree),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("flowsvc-*.whl")
    installed = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(installed)
    modules = sorted(
        ".".join(path.with_suffix("").relative_to(ROOT / "src").parts)
        for path in (ROOT / "src").rglob("*.py")
        if "versions" not in path.parts and path.name != "env.py"
    )
    code = (
        "import importlib, sys\n"
        "for m in sys.argv[1:]:\n"
        "    module = importlib.import_module(m)\n"
        f"    assert module.__file__.startswith({str(installed)!r}), module.__file__\n"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-I",
            "-c",
            f"import sys; sys.path.insert(0, {str(installed)!r})\n" + code,
            *[m.removesuffix(".__init__") for m in modules],
            "flowsvc.v1.flow_run_service_pb2",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
