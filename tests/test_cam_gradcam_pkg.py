"""attnfast.cam against the ``grad-cam`` package (pytorch-grad-cam) on the same model and layer.

grad-cam needs torchvision, which loads only with a torch build that has a matching torchvision
(here: the CUDA-torch environment); elsewhere this module skips, naming why. grad-cam scales each
map to [0, 1] by (A - min) / (max - min + 1e-7) at the layer's resolution, then resizes it to
the input with OpenCV (bilinear), and min-max scales the (layer-averaged) result again; the
comparison resizes attnfast's raw maps (``normalize=False, size=None``) with torch (bilinear,
align_corners=False, the half-pixel convention of OpenCV's INTER_LINEAR) and applies the same
min-max twice (min-max commutes with the resize, so the first one is the package's).
"""
import pytest
import torch
import torch.nn.functional as nnf

try:
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
except Exception as exc:  # noqa: BLE001  -- ImportError, or torchvision failing to load
    pytest.skip(f"grad-cam package unavailable ({type(exc).__name__}: {str(exc)[:120]}); it "
                "needs torchvision, which loads only in the CUDA-torch environment here",
                allow_module_level=True)

from attnfast.cam import CAM
from helpers import cam_images, cam_model

SIZE = (16, 24)  # non-square: an H/W mix-up cannot pass


def _model():
    return cam_model(10)


def _images():
    return cam_images(SIZE)


def _minmax(a):
    lo = a.amin((-2, -1), keepdim=True)
    return (a - lo) / (a.amax((-2, -1), keepdim=True) - lo + 1e-7)


@pytest.mark.parametrize("layer", ["layer1", "layer2", "layer3"])   # 16 x 16 (no resize), 8, 4
def test_gradcam_equals_grad_cam_package(layer):
    model, x = _model(), _images()
    ours = CAM(model, layer, "gradcam", size=None, normalize=False)(x, topk=3)
    module = dict(model.named_modules())[layer]
    with GradCAM(model=model, target_layers=[module]) as theirs:
        for t in range(3):
            got = torch.from_numpy(theirs(x, [ClassifierOutputTarget(int(c))
                                              for c in ours.classes[:, t]]))
            up = nnf.interpolate(ours.maps[:, t][:, None], size=SIZE, mode="bilinear",
                                 align_corners=False)[:, 0]
            expect = _minmax(_minmax(up))
            torch.testing.assert_close(got, expect, atol=1e-4, rtol=1e-4)
