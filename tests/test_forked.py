"""The ``forked`` marker (tests/conftest.py) that the emulated CUDA tests run under: a test
whose process aborts (as the emulator does on a misaligned vector access or a deadlock at a
barrier) fails by itself, and the tests after it still run and report. And the same for a test
that is not forked (a crashing C++ CPU kernel) under ``make test``'s parallel run: the worker
process dies, that test fails, a new worker runs the rest."""
import os
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

CASES = '''
import os
import pytest

pytestmark = pytest.mark.forked


def test_aborts():
    os.abort()


def test_fails():
    assert 1 == 2, "a plain failure comes back"


def test_skips():
    pytest.skip("a skip comes back as a skip")


def test_passes_after_the_abort():
    assert True
'''


def test_an_abort_fails_only_its_own_test(tmp_path):
    (tmp_path / "test_cases.py").write_text(CASES)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), str(HERE.parent)]))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "conftest", "-q", "-rA",
                           "-p", "no:cacheprovider", str(tmp_path / "test_cases.py")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout
    assert "FAILED test_cases.py::test_aborts" in out and "signal 6" in out, out[-3000:]
    assert "FAILED test_cases.py::test_fails" in out and "a plain failure" in out, out[-3000:]
    assert "SKIPPED" in out and "PASSED test_cases.py::test_passes_after_the_abort" in out, \
        out[-3000:]
    assert "2 failed, 1 passed, 1 skipped" in out, out[-3000:]


UNFORKED = CASES.replace("pytestmark = pytest.mark.forked", "")


def test_an_unforked_abort_fails_only_its_own_test_under_make_test(tmp_path):
    """pytest-xdist with the ``-n`` / ``--dist`` of the Makefile's test target: an abort in the
    test process (not forked) fails that test only. (``--dist loadfile`` would not do: it hands
    the crashed test to the next worker again and again and drops the rest of its file.)"""
    make = (HERE.parent / "Makefile").read_text()
    dist = re.search(r"--dist (\w+)", make.split("\ntest:", 1)[1]).group(1)
    (tmp_path / "test_cases.py").write_text(UNFORKED)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider",
                           "-n", "2", "--dist", dist, str(tmp_path / "test_cases.py")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    out = proc.stdout
    assert "FAILED test_cases.py::test_aborts" in out and "crashed" in out, out[-3000:]
    assert "FAILED test_cases.py::test_fails" in out and "a plain failure" in out, out[-3000:]
    assert "PASSED test_cases.py::test_passes_after_the_abort" in out, out[-3000:]
    assert "2 failed, 1 passed, 1 skipped" in out, out[-3000:]
