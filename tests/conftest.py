"""Fixtures shared by the tests, and the ``forked`` marker. The helpers themselves (backends,
input makers, the tolerance rule, the kernel-vs-reference check) are in ``tests/helpers.py``,
imported first so that ``TRITON_INTERPRET`` is set before Triton is imported."""
import os
import pickle
import select
import signal
import sys
import traceback
import zlib

import pytest
import torch

import helpers  # noqa: F401  (sets TRITON_INTERPRET on CPU machines, before attnfast/triton)
import attnfast  # noqa: E402


@pytest.fixture(autouse=True)
def seeded(request):
    """Every test starts from a seed of its own (from its id): reproducible random inputs."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture
def torch_backend():
    """Within the test the ops run on the eager ``torch`` backend (tests of wrappers and apps:
    they check the Python code, not the kernels)."""
    with attnfast.use_backend("torch"):
        yield


# ------------------------------------------------------------------ forked tests
def pytest_configure(config):
    config.addinivalue_line("markers", "forked: run the test body in a forked child process, so "
                            "that a crash (abort, segfault) fails this test only")


def pytest_collection_modifyitems(items):
    if not hasattr(os, "fork"):
        return
    for item in items:
        if item.get_closest_marker("forked") is not None:
            item.runtest = _forked(item.runtest, item.nodeid)


FORK_TIMEOUT_S = 900  # one forked test body at most (the slowest takes about a minute)


def _forked(runtest, nodeid):
    """``runtest`` in a child process: its exception comes back pickled (as text when it cannot
    be pickled); a child killed by a signal or exiting without a word fails the test, naming
    the signal, and every later test still runs."""
    def run():
        sys.stdout.flush(), sys.stderr.flush()
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            os.close(r)
            # The parent's OpenMP thread pool does not survive fork (GNU OpenMP waits forever
            # for threads the child does not have): the child computes on one thread.
            torch.set_num_threads(1)
            try:
                runtest()
                payload = pickle.dumps(None)
            except BaseException as exc:  # noqa: BLE001  -- sent to the parent, which raises it
                payload = pickle.dumps(_portable(exc))
            with os.fdopen(w, "wb") as f:
                f.write(payload)
            os._exit(0)
        os.close(w)
        if not select.select([r], [], [], FORK_TIMEOUT_S)[0]:  # a hang fails this test only
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(r)
            pytest.fail(f"{nodeid}: the test process gave no result in {FORK_TIMEOUT_S} s "
                        "(killed)", pytrace=False)
        with os.fdopen(r, "rb") as f:
            data = f.read()
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            pytest.fail(f"{nodeid}: the test process died of signal {os.WTERMSIG(status)} "
                        "(abort in a kernel: see its stderr above)", pytrace=False)
        if not data:
            pytest.fail(f"{nodeid}: the test process exited ({status}) without a result",
                        pytrace=False)
        outcome = pickle.loads(data)
        if outcome is None:
            return
        kind, value = outcome
        if kind == "skip":
            pytest.skip(value)
        if kind == "xfail":
            pytest.xfail(value)
        if kind == "fail":
            pytest.fail(value, pytrace=False)
        raise value

    return run


def _portable(exc):
    """(kind, what) for the parent: pytest's outcomes (skip, xfail, fail) by their message, any
    other exception itself when it pickles, else an AssertionError with its traceback."""
    for kind, cls in (("skip", pytest.skip.Exception), ("xfail", pytest.xfail.Exception),
                      ("fail", pytest.fail.Exception)):
        if isinstance(exc, cls):
            return kind, str(exc.msg if hasattr(exc, "msg") else exc)
    try:
        pickle.loads(pickle.dumps(exc))
        return "raise", exc
    except Exception:  # noqa: BLE001
        return "raise", AssertionError("".join(traceback.format_exception(exc)))
