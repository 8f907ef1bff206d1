"""What an install from the sdist gets: the whole test suite (conftest.py and shapes.py
included) and the C++/CUDA sources; torch as a declared dependency that the installed torch
satisfies (so `pip install --no-build-isolation` keeps it); and a notice, said once before the
first compile, when the extension was not built at install."""
import configparser
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _tracked(prefix=""):
    """The checkout's files (tracked, or new and not ignored) under ``prefix``."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "--", prefix or "."],
                         cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("not a git checkout: the tracked files are unknown")
    return {p for p in out.stdout.split() if (ROOT / p).is_file()}


def test_sdist_carries_the_tests_and_the_sources(tmp_path):
    """Built from a clean copy of the checkout: an existing attnfast.egg-info/SOURCES.txt would
    add the files it lists to the sdist whatever MANIFEST.in says."""
    src = tmp_path / "src"
    for p in _tracked():
        (src / p).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / p, src / p)
    r = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path)],
                       cwd=src, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    archive, = tmp_path.glob("attnfast-*.tar.gz")
    with tarfile.open(archive) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    assert {"tests/conftest.py", "tests/shapes.py", "Makefile", "README.md"} <= names
    tests = {p for p in _tracked("tests") if p.endswith(".py")}
    assert tests - names == set(), f"tests missing from the sdist: {sorted(tests - names)}"
    sources = {p for p in _tracked("csrc") if p.endswith((".cpp", ".h", ".cu", ".cuh"))}
    assert sources - names == set(), f"sources missing: {sorted(sources - names)}"
    assert not any("__pycache__" in n or n.endswith((".pyc", ".so")) for n in names)


def test_torch_is_a_declared_dependency_the_installed_torch_satisfies():
    requirements = pytest.importorskip("packaging.requirements")
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    reqs = [requirements.Requirement(line) for line in
            cfg["options"]["install_requires"].split("\n") if line.strip()]
    torch_req, = [r for r in reqs if r.name == "torch"]
    # a local version (2.13.0+cpu, +cu130) must satisfy it, or pip would fetch another torch
    assert torch_req.specifier.contains(torch.__version__, prereleases=True), \
        (str(torch_req), torch.__version__)
    # ... and torch stays out of the build requirements (no torch inside a build environment)
    assert "torch" not in (ROOT / "pyproject.toml").read_text().split("requires")[1].split("]")[0]


def test_first_use_compile_says_once_how_long_and_how_to_avoid_it(tmp_path, monkeypatch,
                                                                   capsys):
    from torch.utils import cpp_extension

    from attnfast import _build
    calls = []

    def fake_load(name, sources, build_directory, **kw):  # stands for the 5-minute compile
        calls.append(name)
        (Path(build_directory) / f"{name}.so").write_bytes(b"")

    monkeypatch.setattr(cpp_extension, "load", fake_load)
    monkeypatch.setenv("ATTNFAST_BUILD_DIR", str(tmp_path))
    _build._jit()
    err = capsys.readouterr().err
    assert "not built at install" in err and "about 5 minutes" in err
    assert "--no-build-isolation" in err and "pip install torch" in err
    assert err.count("attnfast:") == 1
    _build._jit()  # compiled before: loaded from the cache, nothing said
    assert capsys.readouterr().err == "" and calls == ["attnfast_C", "attnfast_C"]
