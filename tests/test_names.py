"""One name, one meaning: the attention kinds are one table (``attnfast._schema.ATTENTION_KINDS``)
that every switch over kinds reads, and no struct name of csrc/ is defined in two headers."""
import ast
import re
from pathlib import Path

import pytest
import torch

from attnfast import _schema, capture, reference
from attnfast._schema import ATTENTION_KINDS, KIND_CODES, KIND_NAMES, positive_weights
from attnfast.cam import CAM_KINDS
from attnfast.train import recipes

ROOT = Path(__file__).resolve().parents[1]


def test_positive_weights_pinned():
    # hand-written: pixel-wise maps (Eq. 5), ReLU'd channel weights (Eq. 3-4), Grad-CAM's signed
    assert positive_weights("pixel") is None
    assert positive_weights("channel") is True
    assert positive_weights("gradcam") is False
    with pytest.raises(ValueError, match="attention must be one of .*'pixel'.*got 'spatial'"):
        positive_weights("spatial")


def test_kind_codes_are_those_of_the_cpp_kernels():
    text = (ROOT / "csrc" / "common" / "defs.h").read_text()
    enum = re.search(r"enum Kind : int64_t \{([^}]*)\}", text).group(1)
    cpp = {name.strip()[1:].lower(): int(code) for name, code in
           (item.split("=") for item in enum.split(","))}
    assert cpp == KIND_CODES
    assert KIND_CODES == {"pixel": 0, "channel": 1, "gradcam": 2, "ixg": 3}  # pinned by hand
    assert all(KIND_CODES[KIND_NAMES[c]] == c for c in KIND_NAMES)


def test_loss_codes_are_those_of_the_cpp_kernels():
    """guidance_loss's loss codes: the C++ enum of csrc/common/guidance.h equals LOSS_CODES."""
    text = (ROOT / "csrc" / "common" / "guidance.h").read_text()
    enum = re.search(r"enum GuidanceLoss : int64_t \{([^}]*)\}", text).group(1)
    cpp = {name.strip()[1:].lower(): int(code) for name, code in
           (item.split("=") for item in enum.split(","))}
    assert cpp == _schema.LOSS_CODES == {"energy": 0, "l1": 1, "ppce": 2, "rrr": 3}


def test_the_apps_offer_the_kinds_of_the_table():
    for kind in ATTENTION_KINDS:
        assert recipes.parse_args(["--attention", kind]).attention == kind
    with pytest.raises(SystemExit):
        recipes.parse_args(["--attention", "spatial"])
    for kind in _schema.GUIDANCE_KINDS:  # the guided maps: the table's and ixg
        assert recipes.parse_args(["--guidance-attention", kind]).guidance_attention == kind
    assert set(CAM_KINDS) == {*ATTENTION_KINDS, "hirescam"} and len(CAM_KINDS) == 4


@pytest.mark.parametrize("kind", list(ATTENTION_KINDS))
def test_switches_agree_with_the_table(kind):
    gen = torch.Generator().manual_seed(3)
    f = torch.rand(2, 3, 4, 5, generator=gen, dtype=torch.float64)
    g = torch.randn(2, 3, 4, 5, generator=gen, dtype=torch.float64)
    positive = positive_weights(kind)
    if positive is None:  # written out from the table's meaning, not through any switch
        want = torch.relu((g * f).mean(1))
    else:
        w = (g.clamp_min(0) if positive else g).mean((2, 3))
        want = torch.relu((w[:, :, None, None] * f).sum(1))
    torch.testing.assert_close(reference.layer_attention(f, g, kind), want, rtol=1e-12,
                               atol=1e-12)
    torch.testing.assert_close(capture.layer_map(f, g, kind), want, rtol=1e-12, atol=1e-12)


def _kind_literals(path):
    """Line numbers of literals in ``path`` that list two or more kind names again, and of
    comparisons with a kind name (a switch that does not read the table)."""
    names = set(_schema.GUIDANCE_KINDS)  # every kind: those of ATTENTION_KINDS and ixg
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set, ast.Dict)):
            elts = node.keys if isinstance(node, ast.Dict) else node.elts
            strs = {e.value for e in elts if isinstance(e, ast.Constant)} & names
            if len(strs) >= 2:
                found.append(node.lineno)
        elif isinstance(node, ast.Compare):
            if any(isinstance(e, ast.Constant) and e.value in names
                   for e in (node.left, *node.comparators)):
                found.append(node.lineno)
    return found


def test_no_module_lists_or_switches_on_kinds_outside_the_table():
    files = [*(ROOT / "attnfast").rglob("*.py"), *(ROOT / "triton_kernels").glob("*.py")]
    bad = {str(p.relative_to(ROOT)): lines for p in files
           if p.name != "_schema.py" and (lines := _kind_literals(p))}
    assert not bad, f"kind names listed or compared outside attnfast/_schema.py: {bad}"
    assert _kind_literals(ROOT / "attnfast" / "_schema.py")  # the table itself is seen


def test_no_struct_name_in_two_csrc_headers():
    where = {}
    for path in sorted([*(ROOT / "csrc").rglob("*.h"), *(ROOT / "csrc").rglob("*.cuh")]):
        for name in re.findall(r"^\s*(?:struct|class)\s+(\w+)[^;\n]*\{", path.read_text(),
                               re.M):
            where.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    twice = {n: sorted(p) for n, p in where.items() if len(p) > 1}
    assert not twice, f"one struct name, one struct: {twice}"
    assert "SfLayer" in where and "SfLayerPtrs" in where  # the scan sees both headers


def test_schema_docstring_names_the_table():
    assert "ATTENTION_KINDS" in _schema.__doc__
