"""attnfast: fused kernels for gradient-based attention supervision (Sharpen Focus, GGAM,
guidance from boxes).

Every op has an eager reference (``attnfast.reference``), C++ CPU, CUDA C++ and Triton kernels
with hand-written backward, registered as torch custom ops; ``set_backend`` / ``use_backend``
choose among them (``"auto"`` by default).
"""
from . import ops
from .backend import available_backends, get_backend, set_backend, use_backend
from .ops import *  # noqa: F401,F403  the public ops, ops.__all__
from .ggam import GGAM
from .guidance import Guidance
from .sharpen_focus import SharpenFocus

__version__ = "0.1.0"


def __getattr__(name):
    """``attnfast.cam`` (class activation maps) is imported on first use."""
    if name == "cam":
        import importlib
        return importlib.import_module(".cam", __name__)
    raise AttributeError(f"module 'attnfast' has no attribute {name!r}")


__all__ = [
    "available_backends", "get_backend", "set_backend", "use_backend", *ops.__all__,
    "SharpenFocus", "GGAM", "Guidance",
]
