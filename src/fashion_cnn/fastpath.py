"""Hand-derived training step and inference of the baseline CNN on CPU, for training at batch 32.

At batch 32, autograd's per-op bookkeeping, NCHW max-pooling and a separate optimizer pass cost more
than the arithmetic. This step computes the same loss, gradients and SGD-momentum update as `Baseline`
with autograd and `torch.optim.SGD` (tests/test_fastpath.py checks it), in channels-last layout, with
the large gradients accumulated straight into their momentum buffers by the matrix products that
compute them (buf = momentum * buf + grad).

The first stage (conv, max-pool, ReLU) runs in a small C kernel (conv_pool.c), compiled for this CPU
on first use and cached; without a C compiler, or with FASHION_CNN_NATIVE=0, torch ops do the same.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import subprocess
from pathlib import Path

import torch
import torch.nn.functional as F

from .data import cache_dir
from .runs import atomic_path

aten = torch.ops.aten
log = logging.getLogger("fashion_cnn")
NATIVE_SOURCE = Path(__file__).with_name("conv_pool.c")
NATIVE_FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC")


def cpuinfo_line(*keys: str) -> str:
    """The first /proc/cpuinfo line starting with one of keys ('' where there is none, as off Linux)."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    return next((line for line in lines if line.startswith(keys)), "")


def cpu_model() -> str:
    return cpuinfo_line("model name").partition(":")[2].strip() or "CPU"


def cpu_signature() -> bytes:
    """What a -march=native build depends on: a cache shared between machines must not mix them."""
    return (platform.machine() + cpuinfo_line("flags", "Features")).encode()


@functools.cache
def native_library() -> ctypes.CDLL | None:
    """conv_pool.c built for this CPU (a fraction of a second, once, then cached), or None where it cannot be."""
    if os.environ.get("FASHION_CNN_NATIVE", "1") == "0":
        return None
    compiler = os.environ.get("CC", "cc")
    key = hashlib.sha256(NATIVE_SOURCE.read_bytes() + " ".join((compiler, *NATIVE_FLAGS)).encode()
                         + cpu_signature()).hexdigest()[:16]
    path = cache_dir() / "native" / f"conv_pool-{key}.so"
    try:
        if not path.exists():
            with atomic_path(path) as tmp:  # concurrent first runs never load half a library
                subprocess.run([compiler, *NATIVE_FLAGS, "-o", str(tmp), str(NATIVE_SOURCE)],
                               check=True, capture_output=True, timeout=300)
        lib = ctypes.CDLL(str(path))
    except (OSError, subprocess.SubprocessError) as e:
        detail = e.stderr.decode(errors="replace").strip()[:500] if isinstance(e, subprocess.CalledProcessError) else e
        log.warning(f"the baseline's C kernel is unavailable ({detail}); torch ops do its work, more slowly")
        return None
    pointer, size, count = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.conv_pool_forward.argtypes = [pointer, size, pointer, pointer, pointer, pointer, count]
    lib.conv_pool_backward.argtypes = [pointer, size, pointer, pointer, pointer, pointer, pointer, count]
    lib.conv_pool_forward.restype = lib.conv_pool_backward.restype = None
    return lib


class NativeConvPool:
    """relu(max_pool(conv(x))) of the baseline as (n, 5408) channels-last rows, and its weight gradients,
    by conv_pool.c: no 26x26x32 convolution output is ever stored."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib
        self.saved: tuple | None = None

    def forward(self, x: torch.Tensor, conv: torch.nn.Conv2d, keep: bool = True) -> torch.Tensor:
        x, n = x.to(torch.float32).contiguous(), x.shape[0]  # the kernel reads raw float32 memory
        h = torch.empty(n, 5408)
        which = torch.empty(n, 5408, dtype=torch.uint8) if keep else None
        self.lib.conv_pool_forward(x.data_ptr(), n, conv.weight.data_ptr(), conv.bias.data_ptr(), h.data_ptr(),
                                   which.data_ptr() if keep else None, torch.get_num_threads())
        self.saved = (x, h, which) if keep else None
        return h

    def backward(self, gh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradients of the conv weight (32, 9) and bias (32), given dloss/dh of the last forward."""
        x, h, which = self.saved
        grad_weight, grad_bias = torch.empty(32, 9), torch.empty(32)
        self.lib.conv_pool_backward(x.data_ptr(), len(x), h.data_ptr(), which.data_ptr(), gh.contiguous().data_ptr(),
                                    grad_weight.data_ptr(), grad_bias.data_ptr(), torch.get_num_threads())
        return grad_weight, grad_bias


class TorchConvPool:
    """The same as NativeConvPool with torch ops: the convolution as one matrix product over 3x3 patches
    (a ones column applies the bias and sums its gradient), then max_pool2d_with_indices."""

    def __init__(self) -> None:
        self.patch_buffers: dict[int, torch.Tensor] = {}
        self.saved: tuple | None = None

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """Every 3x3 patch of x (n, 1, 28, 28) as a row of (n*26*26, 10), whose last column holds ones."""
        n = x.shape[0]
        if n not in self.patch_buffers:
            self.patch_buffers[n] = torch.ones(n * 676, 10)
        out = self.patch_buffers[n]
        out[:, :9].view(n, 26, 26, 3, 3).copy_(x.view(n, 28, 28).unfold(1, 3, 1).unfold(2, 3, 1))
        return out

    def forward(self, x: torch.Tensor, conv: torch.nn.Conv2d, keep: bool = True) -> torch.Tensor:
        n, patches = x.shape[0], self.patches(x)
        matrix = torch.cat((conv.weight.view(32, 9), conv.bias[:, None]), 1)
        z = (patches @ matrix.t()).view(n, 26, 26, 32).permute(0, 3, 1, 2)  # NCHW view of channels-last
        pooled, where = aten.max_pool2d_with_indices(z, [2, 2], [2, 2])  # channels-last, unlike max_pool2d
        h = pooled.relu_().permute(0, 2, 3, 1).reshape(n, 5408)  # a view: pooled is channels-last
        self.saved = (patches, z, where, h) if keep else None
        return h

    def backward(self, gh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        patches, z, where, h = self.saved
        n = len(h)
        gh = aten.threshold_backward(gh, h, 0).view(n, 13, 13, 32).permute(0, 3, 1, 2)
        gz = aten.max_pool2d_with_indices_backward(gh, z, [2, 2], [2, 2], [0, 0], [1, 1], False, where)
        g = gz.permute(0, 2, 3, 1).reshape(n * 676, 32).t() @ patches  # (32, 10): weights | bias
        return g[:, :9], g[:, 9]


def conv_pool_stage() -> NativeConvPool | TorchConvPool:
    lib = native_library()
    return NativeConvPool(lib) if lib is not None else TorchConvPool()


@torch.no_grad()
def baseline_logits(m: torch.nn.Module, x: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """Inference in the same layout, several times faster than the NCHW modules on CPU. Chunks of 256
    images keep each stage's output near the cache instead of streaming it through memory."""
    stage, out = conv_pool_stage(), []
    for c in x.split(chunk):
        h = stage.forward(c, m.conv, keep=False)
        a = torch.addmm(m.fc1.bias, h, m.fc1.weight.t()).relu_()
        out.append(torch.addmm(m.fc2.bias, a, m.fc2.weight.t()))
    return torch.cat(out) if out else x.new_empty(0, 10)


def on_cpu_in_float32(model: torch.nn.Module) -> bool:
    p = next(model.parameters())
    return p.device.type == "cpu" and p.dtype == torch.float32


def fast_logits(model: torch.nn.Module):
    """The baseline's inference here, where it applies: on the CPU, in float32, and without test-time
    augmentation (these functions compute plain logits; the model's own forward averages mirror images)."""
    if on_cpu_in_float32(model) and not model.tta:
        return functools.partial(baseline_logits, model)
    return None


def supports(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> bool:
    """True for the baseline on CPU under plain SGD with momentum over all its parameters (not a frozen
    backbone's head alone): the update this step implements."""
    if not on_cpu_in_float32(model):
        return False
    if type(optimizer) is not torch.optim.SGD or len(optimizer.param_groups) != 1:
        return False
    group = optimizer.param_groups[0]
    if [id(p) for p in group["params"]] != [id(p) for p in model.parameters()]:
        return False
    return (group["momentum"] > 0 and group["dampening"] == 0 and not group["nesterov"]
            and group["weight_decay"] == 0 and not group["maximize"])


def fast_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, label_smoothing: float = 0.0,
              amp: bool = False, class_weights: torch.Tensor | None = None) -> "BaselineSGDStep | None":
    """The hand-derived step where it computes what the recipe asks for: cross-entropy in float32, without
    label smoothing, with or without class weights."""
    if supports(model, optimizer) and not label_smoothing and not amp:
        return BaselineSGDStep(model, optimizer, class_weights)
    return None


class BaselineSGDStep:
    """Callable (x, y) -> (summed loss, correct count) that also applies one SGD-momentum update; with
    class weights, the loss is their weighted mean times the batch size, as the autograd step returns it.

    The momentum buffers are the optimizer's own state, so checkpoints and resume see a normal
    torch.optim.SGD; learning rate and momentum are read from it at every step.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.SGD,
                 class_weights: torch.Tensor | None = None) -> None:
        assert supports(model, optimizer)
        self.model, self.group, self.weights = model, optimizer.param_groups[0], class_weights
        self.params = self.group["params"]
        for p in self.params:  # torch's SGD starts from buf = grad, which equals 0 * momentum + grad
            state = optimizer.state[p]
            if state.get("momentum_buffer") is None:
                state["momentum_buffer"] = torch.zeros_like(p)
        self.buffers = [optimizer.state[p]["momentum_buffer"] for p in self.params]
        self.stage = conv_pool_stage()
        self.eye = torch.eye(model.fc2.out_features)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m, n, mu = self.model, x.shape[0], self.group["momentum"]
        buf_w1, buf_b1, buf_w2, buf_b2, buf_w3, buf_b3 = self.buffers

        h = self.stage.forward(x, m.conv)
        a = torch.addmm(m.fc1.bias, h, m.fc1.weight.t()).relu_()
        logits = torch.addmm(m.fc2.bias, a, m.fc2.weight.t())
        correct = (logits.argmax(1) == y).sum()

        g = torch.softmax(logits, 1).sub_(self.eye[y])  # d(loss)/d(logits), per image
        if self.weights is None:
            loss = F.cross_entropy(logits, y, reduction="sum")
            g.div_(n)  # d(mean loss)/d(logits)
        else:  # the weighted mean, as F.cross_entropy(weight=...) takes it: sum(w_y * loss) / sum(w_y)
            w = self.weights[y]
            loss = F.cross_entropy(logits, y, weight=self.weights) * n
            g.mul_((w / w.sum())[:, None])
        ga = aten.threshold_backward(g @ m.fc2.weight, a, 0)
        grad_conv_w, grad_conv_b = self.stage.backward(ga @ m.fc1.weight)

        torch.addmm(buf_w3, g.t(), a, beta=mu, out=buf_w3)
        torch.addmm(buf_w2, ga.t(), h, beta=mu, out=buf_w2)
        buf_w1.view(32, 9).mul_(mu).add_(grad_conv_w)
        buf_b1.mul_(mu).add_(grad_conv_b)
        buf_b2.mul_(mu).add_(ga.sum(0))
        buf_b3.mul_(mu).add_(g.sum(0))
        torch._foreach_add_(self.params, self.buffers, alpha=-self.group["lr"])
        return loss, correct
