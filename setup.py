"""Build attnfast. The C++ extension (`attnfast._C`) is built here when PyTorch is importable;
with `torch.version.cuda` and nvcc present the CUDA kernels are compiled into it as well
(no GPU needed; `TORCH_CUDA_ARCH_LIST` defaults to "8.0;9.0+PTX"). Without torch at build time
the package installs pure-Python and `attnfast._build` compiles the extension on first use."""
import os
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent  # absolute: ninja compiles in build/temp.*


def extensions():
    try:
        from torch.utils import cpp_extension as ce
        import torch
    except ImportError:
        print("attnfast: torch is not importable in this build environment, so the C++ extension "
              "is not built now; it compiles on first use instead (about 5 minutes, once). To "
              "build it here: `pip install torch` first, then `pip install "
              "--no-build-isolation ...`.", file=sys.stderr)
        return [], {}
    sys.path.insert(0, str(ROOT / "attnfast"))
    from _sources import LDFLAGS, flags, sources  # noqa: E402  (plain module, no torch import side effects)
    sys.path.pop(0)
    with_cuda = torch.version.cuda is not None and ce.CUDA_HOME is not None
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
    kind = ce.CUDAExtension if with_cuda else ce.CppExtension
    ext = kind("attnfast._C", [os.path.relpath(s, ROOT) for s in sources(ROOT / "csrc", with_cuda)],
               extra_compile_args=flags(with_cuda), extra_link_args=LDFLAGS,
               include_dirs=[str(ROOT / "csrc")])
    return [ext], {"build_ext": ce.BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
