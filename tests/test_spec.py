"""docs/SPEC.md and the code agree: decision numbers cited in the sources exist, and the public
ops' signatures (names, argument order, defaults) are those of the SPEC's table."""
import ast
import inspect
import re
from pathlib import Path

import pytest

import attnfast

ROOT = Path(__file__).resolve().parents[1]
SPEC = (ROOT / "docs" / "SPEC.md").read_text()
SOURCES = [p for d in ("attnfast", "triton_kernels", "csrc", "tests", "benchmarks", "experiments",
                        ".ci")
           for p in sorted((ROOT / d).rglob("*"))
           if p.suffix in (".py", ".h", ".cuh", ".cu", ".cpp", ".md")]


def _decisions():
    section = SPEC.split("\n## Decisions", 1)[1].split("\n## ", 1)[0]
    return [int(n) for n in re.findall(r"^(\d+)\. \*\*", section, flags=re.M)]


def test_decisions_are_numbered_without_gaps():
    numbers = _decisions()
    assert numbers == list(range(1, len(numbers) + 1)), numbers
    assert len(numbers) >= 18


def test_cited_decisions_exist():
    """Every "decision N" (or "decisions N, M and K", "1-4") cited in a source names a decision
    of docs/SPEC.md."""
    known, bad = set(_decisions()), []
    for path in SOURCES:
        for line_no, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for m in re.finditer(r"decisions? (\d+(?:(?:, | and |-|–)\d+)*)", line):
                cited = set()
                for part in re.split(r", | and ", m.group(1)):
                    lo, _, hi = part.replace("–", "-").partition("-")
                    cited.update(range(int(lo), int(hi or lo) + 1))
                if cited - known:
                    bad.append(f"{path.relative_to(ROOT)}:{line_no}: {line.strip()}")
    assert not bad, "citations of decisions docs/SPEC.md does not have:\n" + "\n".join(bad)


def _table_signatures():
    """(op name, [(argument, default or None)]) of each row of the SPEC's op table."""
    rows = re.findall(r"^\| `(\w+)\(([^`]*)\)` \|", SPEC, flags=re.M)
    out = []
    for name, args in rows:
        if args == "...":
            continue
        params = []
        for arg in args.split(", "):
            key, _, value = arg.partition("=")
            params.append((key, ast.literal_eval(value) if value else None))
        out.append((name, params))
    return out


def test_spec_table_lists_every_public_op():
    listed = {name for name, _ in _table_signatures()} | {"sharpen_focus_loss"}
    public = {n for n in attnfast.__all__ if callable(getattr(attnfast, n))
              and getattr(attnfast, n).__module__ == "attnfast.ops" and n[0].islower()}
    assert listed == public


@pytest.mark.parametrize("name,params", _table_signatures(), ids=[n for n, _ in _table_signatures()])
def test_public_signature_matches_spec(name, params):
    sig = inspect.signature(getattr(attnfast, name)).parameters
    assert list(sig)[:len(params)] == [p for p, _ in params], name
    for arg, default in params:
        if default is not None:
            assert sig[arg].default == default, f"{name}: default of {arg}"
    if "eps" in sig:
        assert sig["eps"].default == 1e-6, f"{name}: eps"


def test_sharpen_focus_loss_defaults_match_spec():
    block = SPEC.split("sharpen_focus_loss(inner_features", 1)[1].split("```", 1)[0]
    for arg, value in re.findall(r"(\w+)=([^,)\s]+)", block):
        got = inspect.signature(attnfast.sharpen_focus_loss).parameters[arg].default
        assert got == ast.literal_eval(value), f"sharpen_focus_loss default of {arg}"
