"""Each folder does one job: benchmarks/ times things (through attnfast.bench), experiments/ are
thin scripts over the trainer (attnfast.train trains; no experiment has a training loop of its
own), the GPU check with its compute-sanitizer case lives in .ci/, and every file a doc links
to exists."""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(path):
    """Dotted names of every module ``path`` imports (``from a.b import c``: a.b and a.b.c)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def _calls(path):
    """Names of every attribute called in ``path`` (``x.backward()`` -> "backward")."""
    return {n.func.attr for n in ast.walk(ast.parse(path.read_text(), str(path)))
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}


def test_benchmarks_only_time():
    scripts = sorted(ROOT.glob("benchmarks/*.py"))
    assert scripts
    for path in scripts:
        if path.name == "conftest.py" or path.name.startswith("test_bench_"):
            continue  # the pytest-benchmark suite over attnfast.bench
        assert any(m.startswith("attnfast.bench") for m in _imports(path)), \
            f"{path.name}: a script in benchmarks/ times through attnfast.bench; " \
            "experiments go to experiments/, checks to .ci/"


def test_experiments_are_thin_scripts_over_the_trainer():
    scripts = sorted(ROOT.glob("experiments/*.py"))
    assert len(scripts) >= 3
    for path in scripts:
        assert any(m.startswith("attnfast.train") for m in _imports(path)), \
            f"{path.name} does not use attnfast.train"
        own_loop = {"backward", "step", "zero_grad"} & _calls(path)
        assert not own_loop, f"{path.name} trains on its own ({sorted(own_loop)}): run the trainer"
        assert "torch.optim" not in path.read_text(), f"{path.name} builds an optimizer"


def test_gpu_check_runs_its_sanitizer_case_next_to_it():
    text = (ROOT / ".ci" / "gpu_check.sh").read_text()
    assert (ROOT / ".ci" / "sanitize_case.py").is_file()
    assert ".ci/sanitize_case.py" in text and "benchmarks/sanitize_case" not in text


def test_every_file_a_doc_links_to_exists():
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
            *sorted(ROOT.glob("benchmarks/*.md"))]
    missing = []
    for doc in docs:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
            if "://" in target or target.startswith("#"):
                continue
            if not (doc.parent / target.split("#")[0]).exists():
                missing.append(f"{doc.relative_to(ROOT)} -> {target}")
    assert not missing, f"links to files that do not exist: {missing}"
