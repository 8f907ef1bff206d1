"""The hooks approach of public Sharpen Focus code, the baseline attnfast is measured against."""
from __future__ import annotations

import torch.nn.functional as nnf

from .. import reference


class HooksSharpenFocus:
    """The approach of public Sharpen Focus code, written here from its description: a forward
    with forward hooks keeping the inner and last features; a full ``.backward()`` of the target
    score and another of the confuser score (gradient of ones, docs/SPEC.md decision 9), each
    captured at the two layers by a module full-backward hook, the parameter gradients cleared after
    each; then the eager attention loss on the captured (detached, first-order) gradients and
    the loss backward."""

    def __init__(self, model, inner="layer3", last="layer4", weight=1.0):
        self.model, self.layers, self.weight = model, (inner, last), weight
        self.feats, self.grads = {}, {}
        modules = dict(model.named_modules())
        for name in self.layers:
            modules[name].register_forward_hook(self._keep_feature(name))
            modules[name].register_full_backward_hook(self._keep_grad(name))

    def _keep_feature(self, name):
        def hook(module, inputs, output):
            self.feats[name] = output
        return hook

    def _keep_grad(self, name):
        def hook(module, grad_input, grad_output):
            self.grads[name] = grad_output[0].detach()
        return hook

    def loss(self, images, targets):
        logits = self.model(images)
        confusers = logits.detach().scatter(1, targets[:, None], float("-inf")).argmax(1)
        captured = []
        for cls in (targets, confusers):
            logits.gather(1, cls[:, None]).sum().backward(retain_graph=True)
            captured.append([self.grads[n] for n in self.layers])
            self.model.zero_grad(set_to_none=True)
        (gi_t, gl_t), (gi_c, gl_c) = captured
        inner, last = (self.feats[n] for n in self.layers)
        attn = reference.sharpen_focus_loss(inner, gi_t, gi_c, last, gl_t, gl_c)[0]
        return nnf.cross_entropy(logits, targets) + self.weight * attn
