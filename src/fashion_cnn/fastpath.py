"""Hand-derived training step and inference of the baseline CNN on CPU, for training at batch 32.

At batch 32, autograd's per-op bookkeeping, NCHW max-pooling and a separate optimizer pass cost more
than the arithmetic. This step computes the same loss, gradients and SGD-momentum update as `Baseline`
with autograd and `torch.optim.SGD` (tests/test_fastpath.py checks it), in channels-last layout, with
the convolution as one matrix product over 3x3 patches, and the large gradients accumulated straight
into their momentum buffers by the matrix products that compute them (buf = momentum * buf + grad).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .models import Baseline

aten = torch.ops.aten


def fill_patches(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Write every 3x3 patch of x (n, 1, 28, 28) as a row of out (n*26*26, 10), whose last column
    holds ones: one GEMM then applies the conv bias in the forward pass and sums the bias gradient in
    the backward pass, with no separate pass over the (n, 26, 26, 32) activations."""
    n = x.shape[0]
    out = out[:n * 676]
    out[:, :9].view(n, 26, 26, 3, 3).copy_(x.view(n, 28, 28).unfold(1, 3, 1).unfold(2, 3, 1))
    return out


def ones_column_buffer(n: int) -> torch.Tensor:
    return torch.ones(n * 676, 10)


def conv_matrix(m: Baseline) -> torch.Tensor:
    """(32, 10): the conv weights with the bias as a tenth column, to multiply with patch rows."""
    return torch.cat((m.conv.weight.view(32, 9), m.conv.bias[:, None]), 1)


@torch.no_grad()
def baseline_logits(m: Baseline, x: torch.Tensor, chunk: int = 128) -> torch.Tensor:
    """Inference in the same layout, 2-3x faster than the NCHW modules on CPU. Chunks of 128 images
    keep the 26x26x32 activations (11 MB) near the cache instead of streaming 86 MB per 1000."""
    patches, conv, out = ones_column_buffer(min(chunk, len(x))), conv_matrix(m), []
    for c in x.split(chunk):
        z = (fill_patches(c, patches) @ conv.t()).view(len(c), 26, 26, 32).permute(0, 3, 1, 2)
        h = aten.max_pool2d_with_indices(z, [2, 2], [2, 2])[0].relu_()  # channels-last, unlike max_pool2d
        h = h.permute(0, 2, 3, 1).reshape(len(c), 5408)
        a = torch.addmm(m.fc1.bias, h, m.fc1.weight.t()).relu_()
        out.append(torch.addmm(m.fc2.bias, a, m.fc2.weight.t()))
    return torch.cat(out) if out else x.new_empty(0, 10)


def is_baseline_on_cpu(model: torch.nn.Module) -> bool:
    return isinstance(model, Baseline) and next(model.parameters()).device.type == "cpu"


def supports(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> bool:
    """True for the baseline on CPU under plain SGD with momentum: the update this step implements."""
    if not is_baseline_on_cpu(model):
        return False
    if type(optimizer) is not torch.optim.SGD or len(optimizer.param_groups) != 1:
        return False
    group = optimizer.param_groups[0]
    return (group["momentum"] > 0 and group["dampening"] == 0 and not group["nesterov"]
            and group["weight_decay"] == 0 and not group["maximize"])


class BaselineSGDStep:
    """Callable (x, y) -> (summed loss, correct count) that also applies one SGD-momentum update.

    The momentum buffers are the optimizer's own state, so checkpoints and resume see a normal
    torch.optim.SGD; learning rate and momentum are read from it at every step.
    """

    def __init__(self, model: Baseline, optimizer: torch.optim.SGD) -> None:
        assert supports(model, optimizer)
        self.model, self.group = model, optimizer.param_groups[0]
        self.params = self.group["params"]
        for p in self.params:  # torch's SGD starts from buf = grad, which equals 0 * momentum + grad
            state = optimizer.state[p]
            if state.get("momentum_buffer") is None:
                state["momentum_buffer"] = torch.zeros_like(p)
        self.buffers = [optimizer.state[p]["momentum_buffer"] for p in self.params]
        self.patch_buffers: dict[int, torch.Tensor] = {}
        self.eye = torch.eye(model.fc2.out_features)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m, n, mu = self.model, x.shape[0], self.group["momentum"]
        buf_w1, buf_b1, buf_w2, buf_b2, buf_w3, buf_b3 = self.buffers

        if n not in self.patch_buffers:
            self.patch_buffers[n] = ones_column_buffer(n)
        patches = fill_patches(x, self.patch_buffers[n])
        z_nchw = (patches @ conv_matrix(m).t()).view(n, 26, 26, 32).permute(0, 3, 1, 2)  # channels-last
        pooled, where = aten.max_pool2d_with_indices(z_nchw, [2, 2], [2, 2])
        h = pooled.relu_().permute(0, 2, 3, 1).reshape(n, 5408)  # a view: pooled is channels-last
        a = torch.addmm(m.fc1.bias, h, m.fc1.weight.t()).relu_()
        logits = torch.addmm(m.fc2.bias, a, m.fc2.weight.t())
        loss = F.cross_entropy(logits, y, reduction="sum")
        correct = (logits.argmax(1) == y).sum()

        g = torch.softmax(logits, 1).sub_(self.eye[y]).div_(n)  # d(mean loss)/d(logits)
        ga = aten.threshold_backward(g @ m.fc2.weight, a, 0)
        gh = aten.threshold_backward(ga @ m.fc1.weight, h, 0)
        gz = aten.max_pool2d_with_indices_backward(
            gh.view(n, 13, 13, 32).permute(0, 3, 1, 2), z_nchw, [2, 2], [2, 2], [0, 0], [1, 1], False, where)
        g_conv = gz.permute(0, 2, 3, 1).reshape(n * 676, 32).t() @ patches  # (32, 10): weights | bias

        torch.addmm(buf_w3, g.t(), a, beta=mu, out=buf_w3)
        torch.addmm(buf_w2, ga.t(), h, beta=mu, out=buf_w2)
        buf_w1.view(32, 9).mul_(mu).add_(g_conv[:, :9])
        buf_b1.mul_(mu).add_(g_conv[:, 9])
        buf_b2.mul_(mu).add_(ga.sum(0))
        buf_b3.mul_(mu).add_(g.sum(0))
        torch._foreach_add_(self.params, self.buffers, alpha=-self.group["lr"])
        return loss, correct
