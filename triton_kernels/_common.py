"""Host-side helpers shared by every Triton op: registration, strides, block and split choices.

Nothing here launches a kernel. Kernels read big N x K x H x W tensors through their (N, K, pixel)
strides, pixel p = i * W + j having one stride (the kernel interface in ``attnfast/_schema.py``),
so contiguous NCHW and channels_last are both read in place.
"""
import functools
import os

import torch
import triton
from torch.library import triton_op, wrap_triton

from attnfast._compat import int_schema_for_triton_op, is_fake

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

# Largest map (pixels) a per-sample program holds as one register tile; larger maps are walked
# in chunks of this many pixels, once per pass. Tests lower it to exercise the chunked path.
MAP_TILE = 4096

# Split policy of the big reductions: aim for `programs_per_sm` programs per SM, never give a
# program fewer than `min_chunk` elements of the reduced axis. `target_programs` overrides the SM
# count (tests set it to force splits on tiny shapes).
TUNING = {"programs_per_sm": 4, "min_chunk": 64, "target_programs": None}

# Side modes of the big kernels (see _attention_pass). The `kind` codes of sharpen_focus_loss
# are attnfast._schema.KIND_CODES.
NONE, MAP, VEC, RELU_VEC = 0, 1, 2, 3


def register(fn):
    """``torch.library.triton_op("attnfast_triton::<fn name>", mutates_args=())`` of ``fn``.

    The schema comes from the annotations, with ``int`` kept as ``int`` (not ``SymInt``).
    """
    with int_schema_for_triton_op():
        return triton_op(f"attnfast_triton::{fn.__name__}", fn, mutates_args=())


def launchable(*tensors):
    """False when there is nothing to compute (an empty tensor), or when the interpreter would be
    handed FakeTensors (shape propagation: the outputs' metadata is all that is asked for)."""
    if any(t.numel() == 0 for t in tensors):
        return False
    if INTERPRET:
        return not any(is_fake(t) for t in tensors)
    return True


def acc_dtype(x):
    """Dtype of maps, losses and small outputs: float64 for float64 inputs, else float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def big_strides(x):
    """(stride_n, stride_k, stride_p) of an N x K x H x W tensor; pixel p = i * W + j."""
    return x.stride(0), x.stride(1), (x.stride(3) if x.shape[3] != 1 else x.stride(2))


def shared_layout(*tensors):
    """True when all N x K x H x W ``tensors`` have the same (N, K, pixel) strides."""
    return len({big_strides(t) for t in tensors}) == 1


def vec_strides(x):
    """(stride_n, stride_k, 0) of an N x K tensor, addressed like a big tensor with one pixel."""
    return x.stride(0), x.stride(1), 0


@functools.lru_cache(maxsize=None)
def _sm_count(index):
    return torch.cuda.get_device_properties(index).multi_processor_count


def _target_programs(device):
    if TUNING["target_programs"] is not None:
        return TUNING["target_programs"]
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return TUNING["programs_per_sm"] * _sm_count(index)
    return 1


def num_splits(device, programs, length):
    """How many programs share a reduction of ``length`` elements when ``programs`` programs
    already run in parallel: enough to fill the device, each keeping >= min_chunk elements.
    Partial results go to a workspace that a second step sums in a fixed order (deterministic)."""
    want = triton.cdiv(_target_programs(device), max(programs, 1))
    return max(1, min(want, length // TUNING["min_chunk"]))


def map_block(hw):
    """(BLOCK, ONE_TILE, num_warps) of a per-sample program over a map of ``hw`` pixels."""
    block = min(triton.next_power_of_2(max(int(hw), 1)), MAP_TILE)
    return block, hw <= block, (8 if block >= 2048 else 4 if block >= 256 else 1)


def launch_per_sample(kernel, n, hw, *args, **constexprs):
    """Launch ``kernel`` with one program per sample (grid (n,)) over maps of ``hw`` pixels
    (or channels), with BLOCK, ONE_TILE and num_warps of ``map_block(hw)``."""
    block, one_tile, warps = map_block(hw)
    wrap_triton(kernel)[(n,)](*args, **constexprs, BLOCK=block, ONE_TILE=one_tile,
                              num_warps=warps)


def per_sample_loss(kernel, inputs, grad, length, *scalars, **constexprs):
    """A per-sample value of N x ``length`` inputs (soft-IoU, consistency, GGAM's KL) by
    ``kernel``, whose arguments are: the inputs, the upstream gradient, the output, one gradient
    per input, length, ``scalars``, GRAD and ``constexprs``. Forward (grad None): the N values
    in the first input's dtype; backward: the gradient of each input for grad = dL/dvalue (N).
    An input given as None (an absent optional one) is neither read nor given a gradient."""
    first = inputs[0]
    n = first.shape[0]
    out = torch.empty(n, device=first.device, dtype=first.dtype)
    grads = [None] * len(inputs) if grad is None else [
        None if t is None else torch.empty_like(t) for t in inputs]
    if launchable(*[t for t in inputs if t is not None]):
        ptrs = [first if t is None else t for t in (*inputs, *grads)]
        launch_per_sample(kernel, n, length, *ptrs[:len(inputs)], out if grad is None else grad,
                          out, *ptrs[len(inputs):], length, *scalars, GRAD=grad is not None,
                          **constexprs)
    return out if grad is None else tuple(grads)


# Tile shapes tried for the big N x K x pixel kernels (1024 elements on 4 warps, 2048 on 8: at
# most ~8 elements per thread and tensor, so the backward's six tiles fit in registers); the
# interpreter runs one small tile (it is slow, and the result does not depend on the tile).
BIG_CONFIGS = [triton.Config({"BLOCK_K": bk, "BLOCK_P": bp}, num_warps=w)
               for bk, bp, w in ((16, 64, 4), (64, 16, 4), (32, 32, 4), (32, 64, 8),
                                 (64, 32, 8), (16, 128, 8), (128, 16, 8))]
INTERPRET_CONFIG = triton.Config({"BLOCK_K": 8, "BLOCK_P": 16}, num_warps=1)


def _prune_big(configs, named_args, **kwargs):
    """Drop tiles much wider than the tensor (K or H*W small), keep at least one."""
    k = triton.next_power_of_2(max(int(named_args["K"]), 1))
    hw = triton.next_power_of_2(max(int(named_args["HW"]), 1))
    kept = [c for c in configs
            if c.kwargs["BLOCK_K"] <= max(16, k) and c.kwargs["BLOCK_P"] <= max(16, hw)]
    return kept or [min(configs, key=lambda c: c.kwargs["BLOCK_K"] * c.kwargs["BLOCK_P"])]


def big_autotune(key):
    """``triton.autotune`` of a big-tensor kernel over BIG_CONFIGS, keyed on shape and layout
    (``key``: argument names); under the interpreter the single INTERPRET_CONFIG, no tuning."""
    if INTERPRET:
        return triton.autotune([INTERPRET_CONFIG], key=key)
    return triton.autotune(BIG_CONFIGS, key=key,
                           prune_configs_by={"early_config_prune": _prune_big})
