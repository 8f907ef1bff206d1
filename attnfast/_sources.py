"""Source lists and compiler flags of the C++/CUDA extension, shared by setup.py and the JIT
build (attnfast._build). Imports nothing but the standard library."""
from pathlib import Path


def sources(csrc: Path, with_cuda: bool):
    """csrc/module.cpp (the empty Python module), csrc/host/*.cpp (the host layer shared by CPU
    and CUDA) and csrc/cpu/*.cpp; with CUDA also csrc/cuda/*.cu (the kernels, framework-free) and
    csrc/cuda/glue/*.cpp (their CUDA dispatch)."""
    files = [csrc / "module.cpp", *sorted((csrc / "host").glob("*.cpp")),
             *sorted((csrc / "cpu").glob("*.cpp"))]
    if with_cuda:
        files += sorted((csrc / "cuda").glob("*.cu"))
        files += sorted((csrc / "cuda" / "glue").glob("*.cpp"))
    return [str(f) for f in files]


def flags(with_cuda: bool):
    """Compiler flags; -fopenmp makes ATen's at::parallel_for in our kernels actually parallel."""
    cxx = ["-O3", "-std=c++17", "-fopenmp"]
    if not with_cuda:
        return {"cxx": cxx}
    return {"cxx": cxx + ["-DATTNFAST_WITH_CUDA"],
            "nvcc": ["-O3", "-std=c++17", "-lineinfo", "-DATTNFAST_WITH_CUDA"]}


LDFLAGS = ["-fopenmp"]
