"""attnfast.Guidance: the step equals CE + weight * the mean energy of eager per-row maps (class
gradients by autograd, one image at a time), unannotated images are not guided, multi-label rows,
second order reaches the head, remove() leaves the model as it was; non-square images."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as nnf

import attnfast
from attnfast import reference
from attnfast.guidance import box_rows


class Net(nn.Module):
    def __init__(self, classes=3):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1, stride=2)
        self.fc = nn.Linear(6, classes)

    def forward(self, x):
        return self.fc(torch.relu(self.conv2(torch.relu(self.conv1(x)))).mean((2, 3)))


def _features(model, x, name):
    out = {}
    h = getattr(model, name).register_forward_hook(lambda m, a, o: out.setdefault("f", o))
    logits = model(x)
    h.remove()
    return logits, out["f"]


@pytest.mark.parametrize("upsample", ["area", "bilinear"])
def test_step_equals_eager_per_row_computation(upsample):
    torch.manual_seed(0)
    model, x = Net().double(), torch.randn(4, 1, 8, 12, dtype=torch.float64)  # H != W
    y = torch.tensor([0, 2, 1, 2])
    boxes = torch.tensor([[0, 0, 4, 6], [2, 3, 8, 12], [0, 0, 8, 12], [1, 1, 3, 7]]).double()
    annotated = torch.tensor([True, True, False, True])
    with attnfast.Guidance(model, {"conv1": 0.5, "conv2": 2.0}, second_order=False,
                           upsample=upsample) as g:
        step = g(x, y, boxes, annotated=annotated)
    want = nnf.cross_entropy(model(x), y)
    for name, w in (("conv1", 0.5), ("conv2", 2.0)):
        losses = []
        for n in (0, 1, 3):  # one image at a time: G[n] = dY[n, y_n] / dF[n] exactly
            logits, f = _features(model, x[n:n + 1], name)
            (gr,) = torch.autograd.grad(logits[0, y[n]], f)
            cov = reference.box_coverage(boxes[n][None, None], x.shape[-2:], f.shape[-2:], upsample)
            t = reference.cell_weights(x.shape[-2:], f.shape[-2:]) if upsample == "bilinear" else None
            a = reference.guidance_map(f.detach(), gr, torch.tensor([0]), "gradcam")
            losses.append(reference.guidance_from_maps(a, cov, "energy", weights=t))
        want = want + w * torch.cat(losses).mean()
    torch.testing.assert_close(step.loss.detach(), want.detach())
    assert step.rows[0].tolist() == [0, 1, 3] and step.rows[1].tolist() == [0, 2, 2]


def test_no_annotated_image_gives_the_classification_loss():
    model, x, y = Net(), torch.randn(3, 1, 8, 8), torch.tensor([0, 1, 2])
    g = attnfast.Guidance(model, "conv2")
    step = g(x, y, [None, None, None])
    assert float(step.attention_loss) == 0.0
    torch.testing.assert_close(step.loss, nnf.cross_entropy(model(x), y))
    g.remove()


def test_second_order_trains_the_head_through_the_gradients():
    """The map's gradient G depends on the head's weights: second order gives the guidance term
    a gradient in them, first order does not."""
    torch.manual_seed(1)
    model, x, y = Net(), torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    boxes = torch.tensor([[0, 0, 4, 4]] * 4).float()
    for order, expect in ((True, True), (False, False)):
        with attnfast.Guidance(model, "conv2", second_order=order) as g:
            step = g(x, y, boxes)
        (d,) = torch.autograd.grad(step.attention_loss, model.fc.weight, allow_unused=True)
        assert (d is not None and d.abs().sum() > 0) == expect, order


def test_multilabel_rows_use_their_class_boxes():
    targets = torch.tensor([[1, 0, 1], [0, 1, 0]])
    boxes = [torch.tensor([[0., 0, 2, 2], [4, 4, 6, 6], [1, 1, 3, 3]]), torch.tensor([[5., 5, 7, 7]])]
    classes = [torch.tensor([0, 2, 0]), torch.tensor([1])]
    images, cls, b = box_rows(targets, boxes, box_classes=classes)
    assert images.tolist() == [0, 0, 1] and cls.tolist() == [0, 2, 1]
    assert b.shape == (3, 2, 4)
    assert b[0].tolist() == [[0, 0, 2, 2], [1, 1, 3, 3]] and b[1].tolist() == [[4, 4, 6, 6], [0, 0, 0, 0]]
    model = Net()
    with attnfast.Guidance(model, "conv2", multilabel=True) as g:
        step = g(torch.randn(2, 1, 8, 8), targets, boxes, box_classes=classes)
    assert torch.isfinite(step.loss)


def test_remove_leaves_the_model_as_it_was():
    torch.manual_seed(2)
    model, x = Net(), torch.randn(2, 1, 8, 8)
    before = model(x)
    g = attnfast.Guidance(model, ["conv1", "conv2"])
    g(x, torch.tensor([0, 1]), torch.tensor([[0, 0, 4, 4]] * 2).float())
    g.remove()
    assert not any(m._forward_hooks for m in model.modules())
    torch.testing.assert_close(model(x), before)


@pytest.mark.parametrize("bad, match", [
    (dict(layers="nope"), "no layer named 'nope'"),
    (dict(attention="hirescam"), "attention must be one of"),
    (dict(loss="bce"), "loss must be one of"),
    (dict(layers={}), "at least one layer"),
    (dict(upsample="nearest"), "upsample must be 'area' or 'bilinear'"),
    (dict(upsample="bilinear", loss="l1"), "defined for loss=\"energy\" only"),
])
def test_bad_arguments(bad, match):
    kw = dict(layers="conv2")
    kw.update(bad)
    with pytest.raises(ValueError, match=match):
        attnfast.Guidance(Net(), kw.pop("layers"), **kw)
