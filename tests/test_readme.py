"""The README's "Use" section runs as written (issue 19, item 4): every ``python`` block of it,
in order, in one namespace, on the default backend; then checks that the custom loop trained
its network, that the wrappers left the model without hooks and that the GGAM state holds the
module."""
import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def use_blocks():
    """The ``python`` code blocks of the README's "## Use" section."""
    text = README.read_text()
    section = text.split("\n## Use\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_use_section_runs_as_written():
    blocks = use_blocks()
    assert len(blocks) >= 4, "the Use section lost its examples"
    ns = {"__name__": "readme"}
    for i, code in enumerate(blocks):
        exec(compile(code, f"README.md Use block {i + 1}", "exec"), ns)
    model, net, out = ns["model"], ns["net"], ns["out"]
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0   # the with-blocks removed
    assert torch.isfinite(out.loss) and out.inner_iou.shape == (8,)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    assert ns["A"].shape == (8, 32, 32) and ns["D"].shape == ns["F_last"].shape
    assert any(k.startswith("attention.") for k in ns["state"])
    assert set(ns["step"].parts) == {"layer2", "layer3"} and ns["step"].rows[0].tolist() == [0, 1]
    assert ns["epg"].shape == (8,) and ((ns["epg"] >= 0) & (ns["epg"] <= 1)).all()

