"""Hand-derived training step and inference of the baseline CNN on CPU, for training at batch 32.

At batch 32, autograd's per-op bookkeeping, NCHW max-pooling and a separate optimizer pass cost more
than the arithmetic. This step computes the same loss, gradients and SGD-momentum update as `Baseline`
with autograd and `torch.optim.SGD` (tests/test_fastpath.py checks it), in channels-last layout, with
the large gradients accumulated straight into their momentum buffers by the matrix products that
compute them (buf = momentum * buf + grad).

The first stage (conv, max-pool, ReLU) runs in a small C kernel (conv_pool.c), compiled for this CPU
on first use and cached; without a C compiler, or with FASHION_CNN_NATIVE=0, torch ops do the same.

With the C kernel, the dense layers' matrix products go through MKL's sgemm in fixed blocks, one thread
each (conv_pool.c's gemm_blocks), so the whole step gives the same bits on any number of threads and
follows the machine's load (machine.adapt_threads). torch's own products split the work by the thread
count and round differently for each: the fallback keeps the job's thread count fixed.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import subprocess
from pathlib import Path

import torch
import torch.nn.functional as F

from fashion_cnn import machine
from fashion_cnn.io import atomic_path, cache_dir

aten = torch.ops.aten
log = logging.getLogger("fashion_cnn")
NATIVE_SOURCE = Path(__file__).with_name("conv_pool.c")
NATIVE_FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC")


@functools.cache
def native_library() -> ctypes.CDLL | None:
    """conv_pool.c built for this CPU (a fraction of a second, once, then cached), or None where it cannot be."""
    if os.environ.get("FASHION_CNN_NATIVE", "1") == "0":
        return None
    compiler = os.environ.get("CC", "cc")
    key = hashlib.sha256(NATIVE_SOURCE.read_bytes() + " ".join((compiler, *NATIVE_FLAGS)).encode()
                         + machine.cpu_signature()).hexdigest()[:16]
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
    pointer, size, count, real, char = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float, ctypes.c_char
    lib.conv_pool_forward.argtypes = [pointer, size, pointer, pointer, pointer, pointer, count]
    lib.conv_pool_backward.argtypes = [pointer, size, pointer, pointer, pointer, pointer, pointer, count]
    lib.gemm_blocks.argtypes = [pointer, pointer, char, char, count, count, count, real, pointer, count, pointer,
                                count, real, pointer, count, count, count, count]
    lib.conv_pool_forward.restype = None
    lib.conv_pool_backward.restype = lib.gemm_blocks.restype = count
    return lib


@functools.cache
def mkl_functions() -> tuple[int, int] | None:
    """Addresses of MKL's sgemm and mkl_set_num_threads_local inside torch (x86 builds link MKL in), or
    None where torch has no MKL."""
    try:
        torch_cpu = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
        return (ctypes.cast(torch_cpu.sgemm_, ctypes.c_void_p).value,
                ctypes.cast(torch_cpu.MKL_Set_Num_Threads_Local, ctypes.c_void_p).value)
    except (OSError, AttributeError):
        return None


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
        if self.lib.conv_pool_backward(x.data_ptr(), len(x), h.data_ptr(), which.data_ptr(),
                                       gh.contiguous().data_ptr(), grad_weight.data_ptr(), grad_bias.data_ptr(),
                                       torch.get_num_threads()):
            raise MemoryError("conv_pool_backward: no memory for the partial sums")
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


class TorchDense:
    """The dense layers' matrix products as torch ops: MKL splits each by the thread count, so the bits
    depend on it."""

    thread_invariant = False

    def mm(self, x: torch.Tensor, y: torch.Tensor, out: torch.Tensor | None = None, beta: float = 0.0):
        """x @ y, or into out: out = beta * out + x @ y."""
        return x @ y if out is None else torch.addmm(out, x, y, beta=beta, out=out)

    def linear(self, x: torch.Tensor, layer: torch.nn.Linear) -> torch.Tensor:
        return torch.addmm(layer.bias, x, layer.weight.t())


def blas_layout(t: torch.Tensor) -> tuple[bytes, int, torch.Tensor]:
    """(transpose flag, leading dimension, tensor) that hand the row-major t to a column-major BLAS as t^T."""
    if t.stride(1) == 1 and t.stride(0) >= max(1, t.shape[1]):
        return b"N", t.stride(0), t
    if t.stride(0) == 1 and t.stride(1) >= max(1, t.shape[0]):
        return b"T", t.stride(1), t
    t = t.contiguous()
    return b"N", max(1, t.shape[1]), t


class NativeDense:
    """The same products through MKL's sgemm in fixed blocks, one thread per block (conv_pool.c's
    gemm_blocks): the same bits on any number of threads."""

    thread_invariant = True
    SPLIT_FROM = 1 << 20  # multiply-adds from which a product is cut into BLOCKS blocks (else one)
    BLOCKS = 4

    def __init__(self, lib: ctypes.CDLL, sgemm: int, local_threads: int) -> None:
        self.lib, self.sgemm, self.local_threads = lib, sgemm, local_threads

    def mm(self, x: torch.Tensor, y: torch.Tensor, out: torch.Tensor | None = None, beta: float = 0.0):
        """x @ y, or into out (contiguous): out = beta * out + x @ y."""
        if out is None:
            out, beta = torch.empty(x.shape[0], y.shape[1]), 0.0
        elif not out.is_contiguous():
            raise ValueError("NativeDense.mm writes into contiguous tensors only")
        rows, inner, cols = x.shape[0], x.shape[1], y.shape[1]
        # column-major: out^T (cols x rows) = y^T (cols x inner) @ x^T (inner x rows)
        (trans_a, lda, y), (trans_b, ldb, x) = blas_layout(y), blas_layout(x)
        blocks = self.BLOCKS if rows * inner * cols >= self.SPLIT_FROM else 1
        # cut the largest dimension: the blocks then stay large enough for MKL's kernels
        split = (cols, rows, inner).index(max(cols, rows, inner))
        if self.lib.gemm_blocks(self.sgemm, self.local_threads, trans_a, trans_b, cols, rows, inner, 1.0,
                                y.data_ptr(), lda, x.data_ptr(), ldb, beta, out.data_ptr(), max(1, cols), blocks,
                                split, torch.get_num_threads()):
            raise MemoryError("gemm_blocks: no memory for the blocks' products")
        return out

    def linear(self, x: torch.Tensor, layer: torch.nn.Linear) -> torch.Tensor:
        # a fresh copy of the bias per row: for one row, expand(...).contiguous() would be the bias itself,
        # and the product would be written into the layer's parameter
        out = torch.empty(len(x), layer.out_features).copy_(layer.bias)
        return self.mm(x, layer.weight.t(), out, beta=1.0)


def dense_products(stage: NativeConvPool | TorchConvPool) -> NativeDense | TorchDense:
    """Blocked products beside the C kernel where torch has MKL; torch's products otherwise."""
    functions = mkl_functions() if isinstance(stage, NativeConvPool) else None
    return NativeDense(stage.lib, *functions) if functions else TorchDense()


@torch.no_grad()
def baseline_logits(m: torch.nn.Module, x: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """Inference in the same layout, several times faster than the NCHW modules on CPU. Chunks of 256
    images keep each stage's output near the cache instead of streaming it through memory."""
    stage, out = conv_pool_stage(), []
    dense = dense_products(stage)
    for c in x.split(chunk):
        h = stage.forward(c, m.conv, keep=False)
        out.append(dense.linear(dense.linear(h, m.fc1).relu_(), m.fc2))
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
    if [id(p) for p in group["params"]] != [id(p) for p in model.parameters()] or model.frozen_backbone:
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
    torch.optim.SGD; learning rate and momentum are read from it at every step. Where its bits do not
    depend on the thread count (thread_invariant), each step lets the thread count follow the load.
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
        self.dense = dense_products(self.stage)
        self.thread_invariant = isinstance(self.stage, NativeConvPool) and self.dense.thread_invariant
        self.eye = torch.eye(model.fc2.out_features)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.thread_invariant:
            machine.adapt_threads()
        m, n, mu, dense = self.model, x.shape[0], self.group["momentum"], self.dense
        buf_w1, buf_b1, buf_w2, buf_b2, buf_w3, buf_b3 = self.buffers

        h = self.stage.forward(x, m.conv)
        a = dense.linear(h, m.fc1).relu_()
        logits = dense.linear(a, m.fc2)
        correct = (logits.argmax(1) == y).sum()

        g = torch.softmax(logits, 1).sub_(self.eye[y])  # d(loss)/d(logits), per image
        if self.weights is None:
            loss = F.cross_entropy(logits, y, reduction="sum")
            g.div_(n)  # d(mean loss)/d(logits)
        else:  # the weighted mean, as F.cross_entropy(weight=...) takes it: sum(w_y * loss) / sum(w_y)
            w = self.weights[y]
            loss = F.cross_entropy(logits, y, weight=self.weights) * n
            g.mul_((w / w.sum())[:, None])
        ga = aten.threshold_backward(dense.mm(g, m.fc2.weight), a, 0)
        grad_conv_w, grad_conv_b = self.stage.backward(dense.mm(ga, m.fc1.weight))

        dense.mm(g.t(), a, buf_w3, beta=mu)
        dense.mm(ga.t(), h, buf_w2, beta=mu)
        buf_w1.view(32, 9).mul_(mu).add_(grad_conv_w)
        buf_b1.mul_(mu).add_(grad_conv_b)
        buf_b2.mul_(mu).add_(ga.sum(0))
        buf_b3.mul_(mu).add_(g.sum(0))
        torch._foreach_add_(self.params, self.buffers, alpha=-self.group["lr"])
        return loss, correct
