"""Hand-derived forward and backward pass of the baseline CNN, for CPU training at batch 32.

At batch 32 autograd's per-op bookkeeping and NCHW max-pooling cost more than the arithmetic. This
computes the same loss and gradients as `Baseline` with autograd (tests/test_fastpath.py checks it),
in channels-last layout, with the convolution as one matrix product over 3x3 patches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .models import Baseline

aten = torch.ops.aten


class BaselineGrads:
    """Callable (x, y) -> (summed loss, correct count) that fills each parameter's .grad."""

    def __init__(self, model: Baseline) -> None:
        self.model = model
        for p in model.parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.model
        n = x.shape[0]
        w1, b1 = m.conv.weight.view(32, 9), m.conv.bias
        patches = x.view(n, 28, 28).unfold(1, 3, 1).unfold(2, 3, 1).reshape(n * 676, 9)
        z = torch.addmm(b1, patches, w1.t())  # (n*26*26, 32): channels-last conv output
        z_nchw = z.view(n, 26, 26, 32).permute(0, 3, 1, 2)
        pooled, where = aten.max_pool2d_with_indices(z_nchw, [2, 2], [2, 2])
        h = pooled.relu_().permute(0, 2, 3, 1).reshape(n, 5408)  # a view: pooled is channels-last
        a = torch.addmm(m.fc1.bias, h, m.fc1.weight.t()).relu_()
        logits = torch.addmm(m.fc2.bias, a, m.fc2.weight.t())

        loss = F.cross_entropy(logits, y, reduction="sum")
        correct = (logits.argmax(1) == y).sum()
        g = torch.softmax(logits, 1)
        g[torch.arange(n), y] -= 1
        g /= n  # gradient of the mean loss

        torch.mm(g.t(), a, out=m.fc2.weight.grad)
        torch.sum(g, 0, out=m.fc2.bias.grad)
        ga = aten.threshold_backward(g @ m.fc2.weight, a, 0)
        torch.mm(ga.t(), h, out=m.fc1.weight.grad)
        torch.sum(ga, 0, out=m.fc1.bias.grad)
        gh = aten.threshold_backward(ga @ m.fc1.weight, h, 0)
        gh_nchw = gh.view(n, 13, 13, 32).permute(0, 3, 1, 2)
        gz = aten.max_pool2d_with_indices_backward(gh_nchw, z_nchw, [2, 2], [2, 2], [0, 0], [1, 1],
                                                   False, where)
        gz = gz.permute(0, 2, 3, 1).reshape(n * 676, 32)
        torch.mm(gz.t(), patches, out=m.conv.weight.grad.view(32, 9))
        torch.sum(gz, 0, out=m.conv.bias.grad)
        return loss, correct
