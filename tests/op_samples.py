"""The one source of per-op sample inputs: arguments for every op of the kernel interface
(attnfast._schema) and for its backward, in a given dtype, memory layout and size, and the
public call (``PUBLIC``) that takes the same arguments through ``attnfast.<op>``. Every test that
needs "each op once" takes it from here (registration, opcheck, backward contract, fake kernels,
Triton ahead-of-time compiles, the emulated CUDA backend, N = 0, non-finite and empty inputs);
``tests/test_op_samples.py`` checks that every op of ``_schema.OPS`` has its entries here and
in ``tests/boundaries.py``. Adding an op = adding its lines to ``op_sample_calls`` and ``PUBLIC``.

Big N x K x H x W tensors take the dtype and layout asked for; everything small (maps, weights,
2-D grads, per-sample values) is contiguous float32, as the interface says. The layouts
'offset_nchw' and 'offset_channels_last' put every tensor (small ones too) one element into its
storage: data pointers that are not 16-byte aligned (``helpers.offset_view``).
``op_sample_calls`` also walks the options that pick different kernel variants: ``positive``,
the three ``kind`` codes, ``normalize`` and ``mask_grad``, resized and same-size masks, soft-IoU
with and without a mask, ``guidance_loss``'s four kinds and losses with computed and given
coverage, and the energy with cell weights (the bilinear option).
"""
from __future__ import annotations

import torch

import attnfast
from attnfast.backend import namespace
from helpers import DEVICE, big, close, in_format, kink_free, offset_view, pre_activation
from attnfast._schema import KIND_CODES, LOSS_CODES, OPS

EPS = 1e-6
# layouts at a misaligned data pointer, each with the dtype it is tried in (2- and 4-byte elements)
OFFSET_LAYOUTS = {"offset_nchw": torch.float16, "offset_channels_last": torch.float32}


def op_sample_calls(dtype=torch.float32, layout="nchw", n=2, k=3, hw=(4, 5), last=(2, 3), device="cpu"):
    """(op name, forward arguments) pairs covering every op and its kernel-selecting options."""
    gen = torch.Generator().manual_seed(0)
    offset = layout.startswith("offset_")  # then every tensor at a misaligned data pointer

    def big(k_, h, w, positive=False):
        t = torch.randn(n, k_, h, w, generator=gen)
        return in_format((t.abs() if positive else t).to(device=device, dtype=dtype), layout)

    def small(*shape, positive=False):
        t = torch.rand(*shape, generator=gen) if positive else torch.randn(*shape, generator=gen)
        return offset_view(t.to(device)) if offset else t.to(device)

    (h, w), (hl, wl) = hw, last
    f, g, g2 = big(k, h, w), big(k, h, w), big(k, h, w)
    fl, gl, gl2 = big(k + 1, hl, wl), big(k + 1, hl, wl), big(k + 1, hl, wl)
    a, b, m = (small(n, h, w, positive=True) for _ in range(3))
    wts, s = small(n, k), small(n, k, positive=True)
    out = [("channel_weights", (g, True)), ("channel_weights", (g, False)),
           ("weighted_attention", (f, wts)), ("pixel_attention", (f, g)),
           ("normalize_attention", (a, EPS)),
           ("soft_mask", (a, 0.55, 100.0, h, w, EPS)),
           ("soft_mask", (a, 0.55, 100.0, 2 * h + 1, w + 2, EPS)),
           ("soft_iou", (a, b, m, EPS)), ("soft_iou", (a, b, small(0), EPS)),
           ("attention_consistency", (a, m, 1.0, EPS)),
           ("channel_spatial_attention", (big(k, h, w, positive=True), s, EPS)),
           ("ggam_loss", (s, wts, EPS))]
    for kind in (0, 1, 2):
        for normalize, mask_grad in ((True, True), (False, False)):
            out.append(("sharpen_focus_loss", (f, g, g2, fl, gl, gl2, kind, 0.55, 100.0, 1.0,
                                               normalize, mask_grad, EPS)))
    out.append(("sharpen_focus_loss", (f, g, g2, fl, gl, small(n, k + 1), 1, 0.55, 100.0, 1.0,
                                       True, False, EPS)))  # a 2-D (per-channel) last gradient
    r = n  # rows: image 0 twice, the last image none (n >= 2), so R = N
    rows = torch.tensor([max(i - 1, 0) for i in range(r)], dtype=torch.long, device=device)
    boxes = torch.tensor([[[0., 0, 3, 2], [1, 1, 9, 9]]] * r, device=device).reshape(r, 2, 4)
    rows, boxes = (offset_view(rows), offset_view(boxes)) if offset else (rows, boxes)
    r_grads = big(k, h, w)[rows]
    r_grads = offset_view(r_grads) if offset else r_grads
    cov = small(r, h, w, positive=True)
    for kind in (0, 1, 2, 3):
        for loss, coverage in ((0, small(0)), (1, cov), (2, small(0)), (3, cov)):
            out.append(("guidance_loss", (f, r_grads, boxes, rows, coverage, small(0), kind, loss,
                                          8.0, 10.0, EPS)))
    out.append(("guidance_loss", (f, small(r, k), boxes, rows, small(0), small(0), 2, 0, 8.0, 10.0,
                                  EPS)))
    # the bilinear option at the layer's own resolution: coverage = the mask, cell weights = 1
    ones = torch.ones(h, w, device=device)
    ones = offset_view(ones) if offset else ones
    out.append(("guidance_loss", (f, r_grads, boxes, rows, cov, ones, 2, 0, 8.0, 10.0, EPS)))
    return out


def sample(name, **kw):
    """The first forward arguments of ``name`` in ``op_sample_calls(**kw)``."""
    return next(args for op, args in op_sample_calls(**kw) if op == name)


_KIND = {code: kind for kind, code in KIND_CODES.items()}
_LOSS = {code: loss for loss, code in LOSS_CODES.items()}


def _guidance(f, g, boxes, rows, coverage, cell_weights, kind, loss, image_h, image_w, eps):
    """guidance_loss through the public function: boxes, or the given coverage as a dense mask
    at the layer's resolution (area-averaged, or with cell weights bilinearly upsampled, to
    itself: the identity)."""
    given = coverage.numel() > 0
    return attnfast.guidance_loss(f, g, None if given else boxes, rows,
                                  image_size=None if given else (int(image_h), int(image_w)),
                                  mask=coverage if given else None, attention=_KIND[kind],
                                  loss=_LOSS[loss], reduction="none", eps=eps,
                                  upsample="bilinear" if cell_weights.numel() else "area")


# op name -> the public function called with the kernel's forward arguments (options by name)
PUBLIC = {
    "channel_weights": lambda g, positive: attnfast.channel_weights(g, positive=positive),
    "weighted_attention": lambda f, w: attnfast.weighted_attention(f, w),
    "pixel_attention": lambda f, g: attnfast.pixel_attention(f, g),
    "normalize_attention": lambda a, eps: attnfast.normalize_attention(a, eps=eps),
    "soft_mask": lambda a, sigma, omega, h, w, eps: attnfast.soft_mask(
        a, sigma=sigma, omega=omega, size=(h, w), eps=eps),
    "soft_iou": lambda a, b, m, eps: attnfast.soft_iou(a, b, m if m.numel() else None, eps=eps),
    "attention_consistency": lambda a, m, alpha, eps: attnfast.attention_consistency(
        a, m, alpha=alpha, eps=eps),
    "sharpen_focus_loss": lambda fi, gti, gci, fl, gtl, gcl, kind, sigma, omega, alpha, normalize,
    mask_grad, eps: attnfast.sharpen_focus_loss(
        fi, gti, gci, fl, gtl, gcl, attention=_KIND[kind], sigma=sigma, omega=omega,
        alpha=alpha, normalize=normalize, mask_grad=mask_grad, reduction="none", eps=eps),
    "channel_spatial_attention": lambda a, s, eps: attnfast.channel_spatial_attention(
        a, s, eps=eps),
    "ggam_loss": lambda s, beta, eps: attnfast.ggam_loss(s, beta, eps=eps),
    "guidance_loss": _guidance,
}


def public(name, args):
    """(the tensors of ``args``, a function of those tensors calling the public op with the
    options of ``args``): the form ``helpers.check`` takes. soft_iou's empty "no mask" tensor
    and the constants of an op (boxes, rows, coverage: no gradient) count as options."""
    slots = _differentiable(name, args)
    tensors = [x for x, t in zip(args, slots) if t]

    def call(*ts):
        it = iter(ts)
        return PUBLIC[name](*(next(it) if t else x for t, x in zip(slots, args)))
    return tensors, call


def _differentiable(name, args):
    """Per argument: a tensor the op differentiates in (not "no mask", not a constant)."""
    names = [n for _, n in OPS[name].arguments]
    return [isinstance(x, torch.Tensor) and x.dim() > 1 and n in OPS[name].differentiable
            for x, n in zip(args, names)]


def backward_args(name, args, outputs):
    """Arguments of ``<name>_backward`` after ``outputs = <name>(*args)``: a random gradient like
    each visible output, the tensor inputs, the saved outputs, the non-tensor inputs."""
    op = OPS[name]
    outs = outputs if isinstance(outputs, tuple) else (outputs,)
    gen = torch.Generator().manual_seed(1)
    grads = [torch.randn(o.shape, generator=gen).to(o).contiguous(memory_format=_format(o))
             for o in outs[:len(op.visible)]]
    tensors = [x for x in args if isinstance(x, torch.Tensor)]
    options = [x for x in args if not isinstance(x, torch.Tensor)]
    return (*grads, *tensors, *(outs[i] for i in op.saved_index), *options)


def _format(t):
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and \
            not t.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def _channels_last(x):
    return x.contiguous(memory_format=torch.channels_last) if torch.is_tensor(x) and \
        x.dim() == 4 else x


def check_backward_contract(backend, name, fmt, device="cpu"):
    """``<op>_backward(*grads, *tensor inputs, *saved outputs, *options)`` of every backend gives
    what the eager backend's gives (autograd of the reference): one gradient per tensor input,
    in its dtype, shape and memory layout. ``fmt``: 'nchw', 'channels_last', or 'mixed' (the
    first argument, the lead big tensor, NCHW and the other big ones channels_last: the host
    layer computes their gradients in the lead's layout and must hand them back in their own;
    autograd would hide a wrong layout by copying into ``.grad``)."""
    torch.manual_seed(0)
    op = OPS[name]
    args = sample(name, device=device)
    if fmt != "nchw":
        args = tuple(x if fmt == "mixed" and i == 0 else _channels_last(x)
                     for i, x in enumerate(args))
    n_in = len(op.tensor_inputs)
    ins, options = args[:n_in], args[n_in:]
    results = {}
    for be in (backend, "torch"):
        ns = namespace(be)
        outs = getattr(ns, name)(*args)
        outs = outs if isinstance(outs, tuple) else (outs,)
        if be == backend:
            grads = tuple(_channels_last(torch.randn_like(o)) if o.dim() == 4 else
                          torch.randn_like(o) for o in outs[:len(op.visible)])
        saved = [outs[i] for i in op.saved_index]
        got = getattr(ns, f"{name}_backward")(*grads, *ins, *saved, *options)
        results[be] = got if isinstance(got, tuple) else (got,)
    diff = [(n, x) for n, x in zip(op.tensor_inputs, ins) if n in op.differentiable]
    assert len(results[backend]) == len(diff)
    for g, want, (input_name, x) in zip(results[backend], results["torch"], diff):
        where = f"{backend} {name}_backward: gradient of {input_name}"
        assert g.dtype == x.dtype and g.shape == x.shape, where
        assert want.dtype == x.dtype and want.shape == x.shape, where + " (torch backend)"
        if x.dim() == 4:
            assert g.stride() == x.stride(), where + ": layout not kept"
            assert want.stride() == x.stride(), where + ": layout not kept (torch backend)"
        close(g, want, where, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ sharpen_focus_loss
def sf_inputs(dtype, n, ki, kl, inner_hw, last_hw, fmt="nchw", per_channel=False, kind="pixel"):
    """Random (F, Gt, Gc) of an inner and a last layer, no map pre-activation near a kink."""
    def make():
        fi, fl = big((n, ki, *inner_hw), dtype, fmt), big((n, kl, *last_hw), dtype, fmt)
        last_g = (lambda: torch.randn(n, kl, device=DEVICE) / 10) if per_channel else \
            (lambda: big((n, kl, *last_hw), dtype, fmt))
        return [fi, big(fi.shape, dtype, fmt), big(fi.shape, dtype, fmt), fl, last_g(), last_g()]

    def pre(fi, gt, gc, fl, lt, lc):
        return torch.cat([pre_activation(kind, f, g).flatten()
                          for f, g in ((fi, gt), (fi, gc), (fl, lt), (fl, lc))])
    return kink_free(make, pre)




def check_per_channel_equals_broadcast(backend, kind, size=((8, 8), (4, 4))):
    """N x K last-layer grads are exactly a gradient that is the same at every pixel."""
    n, ki, kl, (hi, wi), (hl, wl) = 3, 4, 6, *size
    xs = sf_inputs(torch.float32, n, ki, kl, (hi, wi), (hl, wl), per_channel=True)
    g_t, g_c = (x.detach().requires_grad_() for x in xs[4:])
    e_t, e_c = (g[:, :, None, None].expand(-1, -1, hl, wl) for g in (g_t, g_c))
    with attnfast.use_backend(backend):
        a = attnfast.sharpen_focus_loss(*xs[:4], g_t, g_c, attention=kind, reduction="sum")
        b = attnfast.sharpen_focus_loss(*xs[:4], e_t, e_c, attention=kind, reduction="sum")
    close(a.loss, b.loss, "loss, N x K vs broadcast grads", 1e-5, 1e-6)
    ga = torch.autograd.grad(a.loss, (g_t, g_c))
    gb = torch.autograd.grad(b.loss, (g_t, g_c))
    for x, y in zip(ga, gb):
        close(x, y, "gradient, N x K vs broadcast grads", 1e-5, 1e-6)


def check_mask_grad_contract(backend, size=((8, 8), (4, 4))):
    """docs/SPEC.md decision 2 by its contract, not its values: the inner soft-IoU and the
    consistency see the last layer only through the mask, so with ``mask_grad=False`` their
    gradient with respect to the last layer's F and G_target is exactly zero (and G_confuser's
    always), with ``mask_grad=True`` it is not; the last soft-IoU's gradients are those of
    ``mask_grad=False`` plus the mask path, which touches the last F and G_target only."""
    xs = [x.requires_grad_() for x in sf_inputs(torch.float32, 2, 4, 6, *size)]
    through_mask, whole = {}, {}
    for mg in (False, True):
        with attnfast.use_backend(backend):
            out = attnfast.sharpen_focus_loss(*xs, mask_grad=mg, omega=5.0, reduction="sum")
        g = torch.autograd.grad(out.inner_iou.sum() + out.consistency.sum(), xs[3:],
                                allow_unused=True, retain_graph=True)
        through_mask[mg] = [torch.zeros_like(x) if d is None else d for x, d in zip(xs[3:], g)]
        whole[mg] = torch.autograd.grad(out.loss, xs)
    assert all((d == 0).all() for d in through_mask[False]), \
        f"{backend}: mask_grad=False lets gradient through the mask into the last layer"
    assert (through_mask[True][2] == 0).all(), f"{backend}: the mask is built from the target"
    assert not (through_mask[True][0] == 0).all() and not (through_mask[True][1] == 0).all(), \
        f"{backend}: mask_grad=True must pass the gradient through the mask"
    for i in (0, 1, 2, 5):  # inputs the mask does not depend on
        close(whole[True][i], whole[False][i], f"{backend}: mask_grad changed input {i}", 1e-5,
              1e-7)


def call_every_op(n, dtype=torch.float32, fill=None, device="cpu"):
    """Call every op (every case of ``op_sample_calls``, through the public functions) on inputs with
    batch n, optionally all set to ``fill``; returns (all outputs, the inputs)."""
    samples = op_sample_calls(dtype, n=n, device=device)
    inputs = list({id(x): x for name, args in samples
                   for x, d in zip(args, _differentiable(name, args)) if d}.values())
    for x in inputs:
        if fill is not None:
            x.fill_(fill)
        x.requires_grad_()
    outs = []
    for name, args in samples:
        out = PUBLIC[name](*args)
        outs.extend(out if isinstance(out, tuple) else (out,))
    return outs, inputs
