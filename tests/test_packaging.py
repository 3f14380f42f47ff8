"""The package as users get it: a wheel built from this checkout, installed into a clean virtual
environment that already holds torch. torch must stay as it was, every module must be in the wheel,
and the console script must run from it (outside this checkout, so that src/ cannot stand in)."""

import os
import subprocess
import sys
import zipfile
from importlib.metadata import version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "unipetl"


def run(*command, cwd=None, timeout=900):
    proc = subprocess.run([str(c) for c in command], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    assert proc.returncode == 0, f"{' '.join(map(str, command))} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "build", "--wheel", "--outdir", out, ROOT)
    (built,) = out.glob("unipetl-*.whl")
    return built


def test_the_wheel_holds_every_module(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {f"unipetl/{p.relative_to(PACKAGE).as_posix()}" for p in PACKAGE.rglob("*.py")}
    assert modules and modules <= names, f"missing from the wheel: {sorted(modules - names)}"
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    requires = [line for line in zipfile.ZipFile(wheel).read(metadata).decode().splitlines()
                if line.startswith("Requires-Dist: torch")]
    assert requires and all("==" not in line and "<" not in line for line in requires), requires


def test_the_wheel_installs_into_a_clean_venv_without_touching_its_torch(wheel, tmp_path):
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    torch_version = version("torch")  # the torch this suite runs on, installed first as a user's own would be
    run(python, "-m", "pip", "install", "-q", f"torch=={torch_version}")
    run(python, "-m", "pip", "install", "-q", wheel)
    installed = 'from importlib.metadata import version; print(version("torch"))'  # as pip sees it (2.11.0, not +cu130)
    assert run(python, "-c", installed).strip() == torch_version

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    unipetl = venv / "bin" / "unipetl"
    assert run(unipetl, "--version", cwd=outside).strip() == "unipetl 0.1.0"
    tasks = run(unipetl, "tasks", cwd=outside)
    assert "sst2" in tasks and "squad" in tasks and "wmt16_en_ro" in tasks
    location = run(python, "-c", "import unipetl; print(unipetl.__file__)", cwd=outside)
    assert str(venv) in location

    # The core install leaves the extras out, and the first command that needs one names it.
    proc = subprocess.run([str(unipetl), "train", "--max-steps", "1"], capture_output=True, text=True, cwd=outside,
                          timeout=600)
    assert proc.returncode == 2 and "pip install 'unipetl[embedded]'" in proc.stderr, proc.stderr[-2000:]
    assert not (outside / "runs").exists()
