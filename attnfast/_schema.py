"""The kernel interface every backend implements: one record per op, one name everywhere.

Each ``Op`` below states an op's forward arguments, its outputs, which outputs its backward takes
again (``saved``), which outputs are ``hidden`` and its fake kernel (empty outputs of the right
shape, dtype and device, for ``torch.compile`` tracing). The schemas of ``<op>`` and
``<op>_backward`` are derived from it:

    <op>(*inputs) -> (*outputs)
    <op>_backward(*grads of the visible outputs, *tensor inputs, *saved outputs,
                  *non-tensor inputs) -> (one gradient per differentiable tensor input, in order)

with ``grad`` the incoming gradient of a single visible output, ``grad_<output>`` of one of
several. ``hidden`` outputs come last: they exist only for the backward (small intermediate
results the forward has anyway, so that the backward need not read the big inputs again to
rebuild them); autograd marks them non-differentiable, the backward takes no gradient of them
and the public function in ``attnfast.ops`` does not return them. ``constants`` are tensor inputs
that take no gradient (boxes, row indices, box coverage of ``guidance_loss``): the backward returns
nothing for them and autograd gives them None.
``SCHEMAS`` (op name -> schema text) lists both. ``attnfast._build`` defines these schemas in
namespace ``attnfast`` when it loads the C++ extension (which only registers CPU kernels, and CUDA
kernels when built with CUDA); the Triton backend
defines the same names and signatures in ``attnfast_triton`` through ``torch.library.triton_op``;
the eager ``torch`` backend (``attnfast._eager``) has the same signatures over
``attnfast.reference``. ``tests/test_registration.py`` checks all three against this table.

``attnfast.ops`` validates every argument *before* calling a kernel, so kernels may assume:

* features/grads (``F``, ``G``) are 4-D N x K x H x W (``G`` may be 2-D N x K in
  ``sharpen_focus_loss``: a gradient that is the same at every pixel), same dtype and device,
  dtype in {float16, bfloat16, float32} (+ float64 on the backends that accept it); N may be 0.
* big tensors arrive with strides such that the pixel index p = i * W + j has one stride
  (``stride(2) == W * stride(3)``): contiguous NCHW and channels_last both qualify and must be
  read in place; ``ops`` copies anything else to contiguous first (``attnfast._layout``).
* everything small -- maps (N x H x W), per-channel weights (N x K: ``weights``,
  ``channel_weights``, ``gradcam_weights``, 2-D ``grads``), per-sample values (N) and every
  incoming ``grad`` of a small output -- is contiguous and already in the accumulation dtype:
  float32, or float64 when the big inputs are float64. ``grad_out`` of
  ``channel_spatial_attention_backward`` is big: dtype of ``features``, pixel-stride rule above.

Kernels compute in float32 (float64 for float64), return maps/losses in that dtype and input
gradients in the dtype of the input (big-tensor gradients in the input's memory layout), and use
64-bit index arithmetic. ``kind``: the code of an attention kind in ``GUIDANCE_KINDS`` (the
kinds of ``ATTENTION_KINDS`` and ixg, which ``guidance_loss`` alone takes); ``loss`` (LOSS_CODES,
``guidance_loss``): 0 = energy, 1 = l1, 2 = ppce, 3 = rrr.
The math of every op is ``attnfast.reference`` (docs/SPEC.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

# The attention kinds, one row each: name -> (code, channel weights). ``code`` is the ``kind``
# integer the kernels take. ``channel weights`` says how a map A of features F and gradients G is
# built: None, pixel-wise, A = ReLU(mean_k G[k] F[k]) (Sharpen Focus Eq. 5); "positive",
# A = ReLU(sum_k w[k] F[k]) with w = mean_p ReLU(G[k]) (Eq. 3-4); "signed", the same with
# w = mean_p G[k] (Grad-CAM). Every switch over kinds (reference, capture, cam, the Triton
# kernels) reads this table; the C++ and CUDA kernels take the codes.
ATTENTION_KINDS = {
    "pixel": (0, None),
    "channel": (1, "positive"),
    "gradcam": (2, "signed"),
}
# guidance_loss takes one more map: input x gradient at the layer, A = sum_k G[k] F[k] (a sum, no
# ReLU); "sum" in the table's second column.
GUIDANCE_KINDS = {**ATTENTION_KINDS, "ixg": (3, "sum")}
KIND_CODES = {name: code for name, (code, _) in GUIDANCE_KINDS.items()}
KIND_NAMES = {code: name for name, code in KIND_CODES.items()}


def map_form(kind: str):
    """The second column of ``GUIDANCE_KINDS`` for ``kind``: None (pixel-wise mean), "positive"
    or "signed" (channel weights), "sum" (input x gradient); a ValueError for an unknown kind."""
    if kind not in GUIDANCE_KINDS:
        raise ValueError(f"attention must be one of {tuple(GUIDANCE_KINDS)}, got {kind!r}")
    return GUIDANCE_KINDS[kind][1]


def positive_weights(kind: str):
    """How the map of attention kind ``kind`` (a name of ``ATTENTION_KINDS``) is built: None for
    a pixel-wise map, True for channel weights ReLU'd (``positive``), False for signed ones
    (Grad-CAM). An unknown name is a ValueError listing the known ones."""
    if kind not in ATTENTION_KINDS:
        raise ValueError(f"attention must be one of {tuple(ATTENTION_KINDS)}, got {kind!r}")
    weights = ATTENTION_KINDS[kind][1]
    return None if weights is None else weights == "positive"
LOSS_CODES = {"energy": 0, "l1": 1, "ppce": 2, "rrr": 3}  # guidance_loss (docs/SPEC.md)


@dataclass(frozen=True)
class Op:
    """One op of the kernel interface (see the module docstring for the derived schemas)."""
    name: str
    inputs: str                    # forward arguments "Type name, ...", tensors first
    outputs: tuple                 # names of the forward's outputs (all Tensors)
    fake: Callable                 # forward arguments -> empty output(s)
    saved: tuple = ()              # outputs the backward takes after the tensor inputs
    hidden: tuple = ()             # trailing outputs for the backward only: no gradient, not public
    constants: tuple = ()          # tensor inputs that take no gradient (annotations, indices)

    def __post_init__(self):
        assert self.outputs[len(self.outputs) - len(self.hidden):] == self.hidden, self.name

    @property
    def arguments(self) -> list:
        """(type, name) of each forward argument."""
        return [tuple(a.split()) for a in self.inputs.split(", ")]

    @property
    def tensor_inputs(self) -> list:
        return [n for t, n in self.arguments if t == "Tensor"]

    @property
    def differentiable(self) -> list:
        """The tensor inputs the backward returns a gradient for: all but the ``constants``."""
        return [n for n in self.tensor_inputs if n not in self.constants]

    @property
    def saved_index(self) -> tuple:
        """Positions of the ``saved`` outputs among the outputs."""
        return tuple(self.outputs.index(s) for s in self.saved)

    @property
    def visible(self) -> tuple:
        """The differentiable outputs (the public function's): all but the ``hidden`` ones."""
        return self.outputs[:len(self.outputs) - len(self.hidden)]

    @property
    def grad_names(self) -> list:
        """Names of the backward's incoming gradients: one per visible output."""
        return ["grad"] if len(self.visible) == 1 else [f"grad_{o}" for o in self.visible]

    @property
    def schema(self) -> str:
        return f"({self.inputs}) -> {_returns(len(self.outputs))}"

    @property
    def backward_schema(self) -> str:
        tensors = [f"Tensor {n}" for n in self.grad_names + self.tensor_inputs + list(self.saved)]
        options = [f"{t} {n}" for t, n in self.arguments if t != "Tensor"]
        return f"({', '.join(tensors + options)}) -> {_returns(len(self.differentiable))}"


def _returns(n: int) -> str:
    return "Tensor" if n == 1 else f"({', '.join(['Tensor'] * n)})"


# --------------------------------------------------------------------------- fake outputs
def _acc(t):
    """Accumulation dtype of a big input: float64 for float64, else float32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _map_like(t):
    return t.new_empty((t.shape[0], *t.shape[2:]), dtype=_acc(t))


def _per_sample(t):
    return t.new_empty(t.shape[:1], dtype=_acc(t))


def _sf_fake(fi, gti, gci, fl, gtl, gcl, kind, *options):
    """Parts (N each), then the hidden maps (2 x N x H x W) and weights (2 x N x K; K = 0 for
    the pixel kind) of the inner and the last layer."""
    def maps(f):
        return f.new_empty((2, f.shape[0], *f.shape[2:]), dtype=_acc(f))

    def weights(f):
        pixelwise = positive_weights(KIND_NAMES[kind]) is None
        return f.new_empty((2, f.shape[0], 0) if pixelwise else (2, *f.shape[:2]), dtype=_acc(f))
    return (*(_per_sample(fi) for _ in range(3)), maps(fi), maps(fl), weights(fi), weights(fl))


_SF_IN = ("Tensor inner_features, Tensor inner_grads_target, Tensor inner_grads_confuser, "
          "Tensor last_features, Tensor last_grads_target, Tensor last_grads_confuser, "
          "int kind, float sigma, float omega, float alpha, bool normalize, bool mask_grad, "
          "float eps")
_SF_HIDDEN = ("inner_maps", "last_maps", "inner_weights", "last_weights")

def _guidance_fake(f, g, boxes, rows, coverage, cell_weights, kind, loss, image_h, image_w, eps):
    """Per-row losses (R), then the hidden maps (R x h x w) and channel weights (R x K for the
    channel and gradcam kinds, R x 0 otherwise)."""
    r, dt = g.shape[0], _acc(f)
    channel = map_form(KIND_NAMES[kind]) in ("positive", "signed")
    return (f.new_empty((r,), dtype=dt), f.new_empty((r, *f.shape[2:]), dtype=dt),
            f.new_empty((r, f.shape[1] if channel else 0), dtype=dt))


_GUIDANCE_HIDDEN = ("maps", "weights")

OPS = {op.name: op for op in (
    Op("channel_weights", "Tensor grads, bool positive", ("weights",),
       fake=lambda g, positive: g.new_empty(g.shape[:2], dtype=_acc(g))),
    Op("weighted_attention", "Tensor features, Tensor weights", ("attn",),
       fake=lambda f, w: _map_like(f), saved=("attn",)),
    Op("pixel_attention", "Tensor features, Tensor grads", ("attn",),
       fake=lambda f, g: _map_like(f), saved=("attn",)),
    Op("normalize_attention", "Tensor attn, float eps", ("normalized",),
       fake=lambda a, eps: torch.empty_like(a)),
    Op("soft_mask", "Tensor attn, float sigma, float omega, int out_h, int out_w, float eps",
       ("mask",), fake=lambda a, sigma, omega, h, w, eps: a.new_empty((a.shape[0], h, w))),
    Op("soft_iou", "Tensor attn_a, Tensor attn_b, Tensor mask, float eps", ("iou",),
       fake=lambda a, b, m, eps: _per_sample(a)),
    Op("attention_consistency", "Tensor attn, Tensor mask, float alpha, float eps",
       ("consistency",), fake=lambda a, m, alpha, eps: _per_sample(a)),
    # Hidden, per layer: the raw maps A (post-ReLU, before any normalization) of the target [0]
    # and the confuser [1], 2 x N x H x W, and, for the channel/gradcam kinds, the channel
    # weights w they were built from (A = ReLU(sum_k w[k] F[k])), 2 x N x K (2 x N x 0 for the
    # pixel kind). With them the backward reads F, G_t, G_c of each layer once (csrc/cuda/NOTES.md).
    Op("sharpen_focus_loss", _SF_IN, ("inner_iou", "last_iou", "consistency", *_SF_HIDDEN),
       fake=_sf_fake, saved=_SF_HIDDEN, hidden=_SF_HIDDEN),
    Op("channel_spatial_attention", "Tensor features, Tensor channel_weights, float eps",
       ("out", "spatial"), fake=lambda f, s, eps: (torch.empty_like(f), _map_like(f)),
       saved=("spatial",)),
    Op("ggam_loss", "Tensor channel_weights, Tensor gradcam_weights, float eps", ("loss",),
       fake=lambda s, beta, eps: _per_sample(s)),
    # Rows r = (image rows[r], class): F is N x K x h x w, grads R x K x h x w (or R x K), boxes
    # R x B x 4 (image pixels; read when coverage is empty), coverage R x h x w or empty,
    # cell_weights h x w (the energy's denominator weights: bilinear option) or empty. Hidden:
    # the raw maps A (R x h x w) and the channel kinds' weights, so the backward rebuilds no map.
    Op("guidance_loss", "Tensor features, Tensor grads, Tensor boxes, Tensor rows, "
       "Tensor coverage, Tensor cell_weights, int kind, int loss, float image_h, float image_w, "
       "float eps",
       ("loss", *_GUIDANCE_HIDDEN), fake=_guidance_fake, saved=_GUIDANCE_HIDDEN,
       hidden=_GUIDANCE_HIDDEN, constants=("boxes", "rows", "coverage", "cell_weights")),
)}

FORWARD_OPS = tuple(OPS)

SCHEMAS = {}
for _op in OPS.values():
    SCHEMAS[_op.name] = _op.schema
    SCHEMAS[f"{_op.name}_backward"] = _op.backward_schema
del _op
