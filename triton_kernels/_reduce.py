"""Device helpers shared by the big-tensor kernels, and the deterministic split-sum step.

A big tensor X is N x K x P (P = H * W pixels) addressed as X[n, k, p] = base + n*sn + k*sk + p*sp
with 64-bit offsets. A reduction too short in programs for the device is split over ``nsplit``
programs that each write a partial sum to a float32 workspace ``part[n, s, l]``;
``sum_splits`` then adds the partials in split order (no atomics: bitwise reproducible).
"""
import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from ._common import launchable


@triton.jit
def relu(x):
    """max(x, 0), NaN kept (as torch.relu)."""
    return tl.where(x < 0, 0.0, x)


@triton.jit
def tile_offsets(sn, sk, sp, n, k, p):
    """int64 offsets [BLOCK_K, BLOCK_P] of X[n, k, p] for the strides (sn, sk, sp)."""
    return n.to(tl.int64) * sn + k.to(tl.int64)[:, None] * sk + p.to(tl.int64)[None, :] * sp


@triton.jit
def load_tile(x_ptr, sn, sk, sp, n, k, kmask, p, pmask):
    """(mask, offsets, X[n, k, p] as float32) of a [BLOCK_K, BLOCK_P] tile of channels k
    (valid where kmask) by pixels p (valid where pmask); 0 outside the mask."""
    mask = kmask[:, None] & pmask[None, :]
    off = tile_offsets(sn, sk, sp, n, k, p)
    return mask, off, tl.load(x_ptr + off, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def offsets_like(off, sn, sk, sp, n, k, p, SHARED: tl.constexpr):
    """Offsets of a tensor: ``off`` (those of F) when every big tensor of the kernel has F's
    strides (SHARED, the usual case: one offset tile instead of one per tensor), else its own."""
    if SHARED:
        r = off
    else:
        r = tile_offsets(sn, sk, sp, n, k, p)
    return r


@triton.jit
def load_weights(w_ptr, w_sn, w_sk, n, k, kmask, RELU: tl.constexpr):
    """w[n, k] of an N x K tensor as float32 (ReLU(w) if RELU), 0 outside kmask."""
    w = tl.load(w_ptr + n.to(tl.int64) * w_sn + k.to(tl.int64) * w_sk, mask=kmask, other=0.0)
    w = w.to(tl.float32)
    if RELU:
        w = relu(w)
    return w


@triton.jit
def channel_block_program(K, HW, p_chunk, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr):
    """Program (n, channel block) x split s of the kernels that walk pixels for fixed channels.

    Grid (N * cdiv(K, BLOCK_K), nsplit); split s covers pixels [p_lo, p_hi).
    Returns n (int64), k, kmask, p_lo, p_hi, s.
    """
    pid = tl.program_id(0)
    s = tl.program_id(1)
    num_kblk = tl.cdiv(K, BLOCK_K)
    n = (pid // num_kblk).to(tl.int64)
    k = (pid % num_kblk) * BLOCK_K + tl.arange(0, BLOCK_K)
    p_lo = s * p_chunk
    p_hi = tl.minimum(p_lo + p_chunk, HW)
    return n, k, k < K, p_lo, p_hi, s


@triton.jit
def _sum_splits_kernel(part_ptr, out_ptr, ref_ptr, L, nsplit, scale,
                       EPILOGUE: tl.constexpr, BLOCK: tl.constexpr):
    """out[n, l] = epi(scale * sum_s part[n, s, l]), s in order; part is N x nsplit x L.

    EPILOGUE 0: identity, 1: ReLU, 2: zero where ref[n, l] <= 0 (chain rule of w = ReLU(ref)).
    """
    n = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < L
    acc = tl.zeros([BLOCK], tl.float32)
    for s in range(nsplit):
        acc += tl.load(part_ptr + (n * nsplit + s) * L + offs, mask=mask, other=0.0)
    v = acc * scale
    if EPILOGUE == 1:
        v = relu(v)
    if EPILOGUE == 2:
        ref = tl.load(ref_ptr + n * L + offs, mask=mask, other=0.0)
        v = tl.where(ref <= 0, 0.0, v)  # ReLU'(NaN) = 1, as torch
    tl.store(out_ptr + n * L + offs, v, mask=mask)


def sum_splits(part, out, scale=1.0, epilogue=0, ref=None):
    """Write out (N x L view) = epilogue(scale * part.sum(1)) for part N x nsplit x L (float32)."""
    n, nsplit, length = part.shape
    if launchable(part):
        block = min(1024, triton.next_power_of_2(length))
        wrap_triton(_sum_splits_kernel)[(n, triton.cdiv(length, block))](
            part, out, part if ref is None else ref, length, nsplit, scale,
            EPILOGUE=epilogue, BLOCK=block)
    return out


def workspace(n, nsplit, length, like):
    """float32 N x nsplit x length buffer for partial sums."""
    return torch.empty(n, nsplit, length, device=like.device, dtype=torch.float32)
