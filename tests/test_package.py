"""The library is the library: ``import attnfast`` pulls in neither app (trainer, benchmarks)
nor their dependencies. Checked in a fresh interpreter, where nothing was imported before."""
import subprocess
import sys

APPS_AND_THEIR_DEPENDENCIES = ("attnfast.train", "attnfast.bench", "matplotlib", "sklearn")


def _fresh(code):
    """Run ``code`` in a fresh interpreter; its stderr when it failed."""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    return proc.returncode, proc.stderr[-3000:]


def test_import_attnfast_imports_no_app():
    rc, err = _fresh("import sys\nimport attnfast\n"
                     f"loaded = [m for m in {APPS_AND_THEIR_DEPENDENCIES!r} if m in sys.modules]\n"
                     "assert not loaded, f'import attnfast imported {loaded}'\n"
                     "assert attnfast.SharpenFocus and attnfast.GGAM\n")
    assert rc == 0, err


def test_apps_import_apart_from_each_other():
    """The trainer does not import the benchmarks (the benchmarks use the trainer's models)."""
    rc, err = _fresh("import sys\nimport attnfast.train\n"
                     "assert 'attnfast.bench' not in sys.modules\n"
                     "assert callable(attnfast.train.main)\n")
    assert rc == 0, err


def test_every_subpackage_is_installed():
    """setup.cfg lists its packages by hand: each folder of attnfast/ with an __init__.py must
    be there, or an installed (non-editable) attnfast lacks it."""
    import configparser
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    cfg = configparser.ConfigParser()
    cfg.read(root / "setup.cfg")
    listed = {p.strip() for p in cfg["options"]["packages"].replace(",", "\n").split("\n")}
    found = {".".join(p.parent.relative_to(root).parts)
             for p in (root / "attnfast").rglob("__init__.py")}
    assert found - listed == set(), f"packages missing from setup.cfg: {sorted(found - listed)}"
