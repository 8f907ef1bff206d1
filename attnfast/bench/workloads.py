"""What a timed call runs: a kernel case's rotating inputs and upstream gradients with the
prepare/run closures of each mode (:class:`KernelWorkload`), and one training step of each
variant (:class:`TrainStep`)."""
from __future__ import annotations

import torch
import torch.nn.functional as nnf

from .. import reference
from ..backend import resolve, use_backend
from ..sharpen_focus import SharpenFocus
from .cases import Case, Config, TrainNet
from .hooks import HooksSharpenFocus
from .timing import nbytes


def _outputs(out) -> list:
    return list(out) if isinstance(out, tuple) else [out]


class KernelWorkload:
    """The rotating input sets of one case (shared by every provider) and its fixed random
    upstream gradients, with the prepare/run closures of each mode."""

    def __init__(self, case: Case, cfg: Config):
        self.case, self.cfg = case, cfg
        one = nbytes(case.make(cfg, 0))
        self.n_sets = max(2, min(32, -(-cfg.rotate_bytes // max(one, 1)) + 1))
        self.sets = [case.make(cfg, seed) for seed in range(self.n_sets)]
        outs = _outputs(getattr(reference, case.op)(*self.sets[0], **case.kwargs))
        gen = torch.Generator().manual_seed(1234)
        self.grads = [torch.empty_like(o, requires_grad=False).copy_(torch.randn(o.shape,
                                                                                 generator=gen))
                      for o in self._diff(outs)]    # in the output's dtype and memory layout
        n_in, n_out, n_g = nbytes(self.sets[0]), nbytes(outs), nbytes(self.grads)
        self.bytes = {"fwd": n_in + n_out, "bwd": n_g + 2 * n_in, "fwd+bwd": 2 * n_in + n_out + n_g}

    def _diff(self, outs):
        return outs[: self.case.n_grad_out] if self.case.n_grad_out else outs

    def closures(self, fn, mode: str):
        """(prepare, run) for ``mode``; run returns what it produced so memory counts it."""
        case, sets = self.case, self.sets

        def forward(xs):
            return self._diff(_outputs(fn(*xs, **case.kwargs)))

        def backward(outs, xs):
            return torch.autograd.grad(outs, xs, self.grads)

        if mode == "fwd":
            return (lambda i: sets[i]), forward
        if mode == "bwd":
            return (lambda i: (forward(sets[i]), sets[i])), (lambda s: backward(*s))
        return (lambda i: sets[i]), (lambda xs: backward(forward(xs), xs))


def train_variants() -> dict:
    """name -> (make(model) giving loss(images, targets) of one step, attnfast backend or None).
    The caller runs the backward and the optimizer step."""
    def baseline(model):
        return lambda x, y: nnf.cross_entropy(model(x), y)

    def sharpen(second_order, backend):
        def make(model):
            sf = SharpenFocus(model, inner_layer="layer3", last_layer="layer4", head="fc",
                              second_order=second_order)

            def loss(x, y):
                with use_backend(backend):
                    return sf(x, y).loss
            return loss
        return make, backend

    return {"baseline": (baseline, None),
            "sf1_attnfast": sharpen(False, "auto"), "sf2_attnfast": sharpen(True, "auto"),
            "sf1_eager": sharpen(False, "torch"), "sf2_eager": sharpen(True, "torch"),
            "sf1_hooks": (lambda model: HooksSharpenFocus(model).loss, None)}


class TrainStep:
    """One training variant on a fixed synthetic batch: the model (seed 0), SGD with momentum,
    and ``step()`` = loss (under autocast when --dtype is half), backward, optimizer step.
    One step is taken at construction so the momentum buffers exist before any measurement."""

    def __init__(self, cfg: Config, net: TrainNet, variant: str):
        dev = cfg.torch_device
        fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(net.n, 3, net.size, net.size, generator=gen).to(dev,
                                                                            memory_format=fmt)
        self.y = torch.randint(0, net.classes, (net.n,), generator=gen).to(dev)
        torch.manual_seed(0)
        self.model = net.build().to(dev, memory_format=fmt)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=1e-3, momentum=0.9)
        make, backend = train_variants()[variant]
        self.loss_fn = make(self.model)
        self.ops = _resolve_backend(backend, dev) if backend else (
            "torch" if variant == "sf1_hooks" else "-")
        self.amp = cfg.torch_dtype in (torch.float16, torch.bfloat16)
        self.dtype = cfg.torch_dtype
        self.step()

    def step(self, _=None):
        with torch.autocast(self.x.device.type, self.dtype, enabled=self.amp):
            loss = self.loss_fn(self.x, self.y)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def resident_bytes(self) -> int:
        """Bytes held across steps: parameters, buffers, optimizer state and the batch."""
        state = [t for s in self.opt.state.values() for t in s.values() if torch.is_tensor(t)]
        return nbytes([*self.model.parameters(), *self.model.buffers(), *state, self.x, self.y])


def _resolve_backend(name: str, device: torch.device) -> str:
    """The concrete backend ``name`` ("auto", ...) means for tensors on ``device``."""
    with use_backend(name):
        return resolve(device)
