"""Several processes under torchrun: one model trained data-parallel (`train`), or whole folds spread over
the processes (`cv`).

torchrun (torch.distributed.run) starts the processes and gives each RANK, WORLD_SIZE, LOCAL_RANK,
LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT; the process group starts on first use, with gloo for CPU
tensors and NCCL for CUDA tensors. Without WORLD_SIZE (or with 1) no process group starts and every helper
here is what one process does alone, so a single process runs exactly as it did before this module.

Between processes travel tensors, and JSON as bytes in tensors: nothing is pickled.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F

from fashion_cnn.data.fmnist import DataError, Dataset
from fashion_cnn.evaluation.inference import predict_logits
from fashion_cnn.io import ModelFileError
from fashion_cnn.machine import env_rank
from fashion_cnn.training.runs import Run

log = logging.getLogger("fashion_cnn")


class Quiet(Exception):
    """An error that rank 0 reports for every process: this one exits non-zero without a word."""


REPORTED = (DataError, ModelFileError, OSError, ValueError)  # one-line errors (cli.main); others keep tracebacks
# the options that may differ between processes: where each node's copy of the data is (check_same_data
# compares the data itself), and how many CPU threads each uses
PER_PROCESS = ("data", "data_dir", "add_to", "threads")


@dataclass(frozen=True)
class World:
    """The processes of this job: this one's rank among `size`, and among the `local_size` on its node."""

    rank: int = 0
    size: int = 1
    local_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes the run directory and logs."""
        return self.rank == 0


_world: World | None = None
_started_group = False  # whether this module started the process group (and so ends it)
_rank_log: logging.Handler | None = None


def world() -> World:
    """This job's processes; under torchrun the first call joins the process group (from torchrun's
    environment), and the other ranks' log becomes quiet: rank 0 logs for all."""
    global _world, _started_group, _rank_log
    if _world is not None:
        return _world
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        _world = World()
        return _world
    rank, local_rank = env_rank(), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "gloo"
        if torch.cuda.is_available():  # each process its own GPU; CPU tensors still go through gloo
            if local_rank < torch.cuda.device_count():
                torch.cuda.set_device(local_rank)
            backend = "cpu:gloo,cuda:nccl"
        dist.init_process_group(backend)  # env://: MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE
        _started_group = True
    _world = World(rank, size, int(os.environ.get("LOCAL_WORLD_SIZE", str(size))))
    if rank > 0:
        _rank_log = logging.StreamHandler()
        _rank_log.setFormatter(logging.Formatter(f"[rank {rank}] %(message)s"))
        _rank_log.setLevel(logging.WARNING)
        log.addHandler(_rank_log)
        log.propagate = False
    return _world


def is_main() -> bool:
    """Whether this is rank 0 (or the only process)."""
    return world().is_main


def teardown(finished: bool = False) -> None:
    """Leave the process group this module joined (at the end of a command). After a finished command every
    process waits for the others first: a process that tears its gloo connections down while another
    still writes the results can abort it ("terminate called without an active exception")."""
    global _world, _started_group, _rank_log
    if _started_group and dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()
    if _rank_log is not None:
        log.removeHandler(_rank_log)
    _world, _started_group, _rank_log = None, False, None


def rank_prefix() -> str:
    """'[rank k] ' before the errors of the processes other than rank 0, from torchrun's environment."""
    rank = env_rank()
    return f"[rank {rank}] " if rank else ""


# --- collectives: the identity on one process --------------------------------------------------------------

def all_gather_json(obj: Any) -> list:
    """obj (anything JSON can hold) from every process, in rank order."""
    w = world()
    if w.size == 1:
        return [obj]
    data = json.dumps(obj).encode()
    sizes = [torch.zeros(1, dtype=torch.long) for _ in range(w.size)]
    dist.all_gather(sizes, torch.tensor([len(data)]))
    longest = int(max(sizes))
    mine = torch.zeros(longest, dtype=torch.uint8)
    mine[:len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    everyone = [torch.empty(longest, dtype=torch.uint8) for _ in range(w.size)]
    dist.all_gather(everyone, mine)
    return [json.loads(bytes(t[:int(n)].numpy())) for t, n in zip(everyone, sizes)]


def broadcast_json(obj: Any) -> Any:
    """Rank 0's obj, on every process."""
    return all_gather_json(obj if is_main() else None)[0]


def all_reduce_sum(*tensors: torch.Tensor) -> None:
    """Sum each tensor over the processes, in place."""
    if world().size > 1:
        for t in tensors:
            dist.all_reduce(t)


def gather_dict(mine: dict[int, dict]) -> dict[int, dict]:
    """The union of every process's {number: JSON-able dict} (cv: fold -> its results), by number."""
    if world().size == 1:
        return mine
    merged = {int(k): v for part in all_gather_json(mine) for k, v in part.items()}
    return dict(sorted(merged.items()))


def share(n: int) -> tuple[int, int]:
    """This process's contiguous part [lo, hi) of n items: shares differ by one at most."""
    w = world()
    return w.rank * n // w.size, (w.rank + 1) * n // w.size


# --- failing together --------------------------------------------------------------------------------------

@contextlib.contextmanager
def agreed() -> Iterator[None]:
    """A block that every process runs, failing everywhere when it fails anywhere (a bad option, a node
    without the data): rank 0 raises its own error, else the first failing rank's with that rank and host
    named; the others raise Quiet, unless their own error says something else, which they raise themselves.
    No collective may run inside the block."""
    w = world()
    if w.size == 1:
        yield
        return
    error: Exception | None = None
    try:
        yield
    except Exception as e:  # every kind: the other processes must hear of it, or they wait forever
        error = e
    reports = all_gather_json([socket.gethostname(), None if error is None else str(error)])
    failed = [(rank, host, message) for rank, (host, message) in enumerate(reports) if message is not None]
    if not failed:
        return
    rank, host, message = failed[0]  # what rank 0 reports
    if error is not None and (w.is_main or str(error) != message or not isinstance(error, REPORTED)):
        raise error
    if w.is_main:
        raise ValueError(f"rank {rank} ({host}): {message}")
    raise Quiet(message)


def check_global_batch(batch_size: int) -> None:
    """`train`: --batch-size is the global batch, split evenly over the processes."""
    size = world().size
    if batch_size % size:
        raise ValueError(f"--batch-size {batch_size} is the global batch, shared by {size} processes: it must be "
                         f"a multiple of {size}")


def check_folds(folds: int) -> None:
    """`cv`: each process trains whole folds, so there must be one for each."""
    size = world().size
    if folds < size:
        raise ValueError(f"cv trains whole folds, one process each: {size} processes for --folds {folds} would "
                         f"leave {size - folds} idle; start {folds} or fewer (all nodes together)")


def check_same_config(config: dict) -> None:
    """Every process runs the job with rank 0's options (config: the job's options, JSON-able), PER_PROCESS
    aside; checked before the first step: another --epochs leaves processes waiting for each other for
    ever, another --lr or --seed trains a model that no single set of options describes."""
    configs = all_gather_json([socket.gethostname(), config])
    with agreed():
        host0, config0 = configs[0]
        for rank, (host, theirs) in enumerate(configs):
            differ = [k for k in sorted(set(theirs) | set(config0))
                      if k not in PER_PROCESS and theirs.get(k) != config0.get(k)]
            if differ:
                raise ValueError(f"rank {rank} ({host}) runs other options than rank 0 ({host0}): " + ", ".join(
                    f"--{k.replace('_', '-')} {theirs.get(k)!r} (rank 0: {config0.get(k)!r})" for k in differ)
                    + "; start every process with the same options")


def check_same_data(data: Dataset) -> None:
    """Every node reads its own copy of the data: all must hold the same images, labels and classes."""
    prints = all_gather_json([socket.gethostname(), data.source, data.checksums, list(data.class_names)])
    with agreed():
        host0, source0, checksums0, classes0 = prints[0]
        for rank, (host, source, checksums, classes) in enumerate(prints):
            if (checksums, classes) != (checksums0, classes0):
                differ = "checksums" if checksums != checksums0 else "classes"
                raise ValueError(f"rank {rank} ({host}) read other data than rank 0 ({host0}): other {differ} "
                                 f"({source} there, {source0} on rank 0); every node needs a copy of the same data")


# --- the run directory: rank 0's ----------------------------------------------------------------------------

@contextlib.contextmanager
def shared_run(open_run: Callable[[], ContextManager[Run]]) -> Iterator[Run]:
    """The job's run directory, opened by rank 0 alone (created or resumed, locked, logged to); the other
    processes get its path and check that they see it: cv's ranks write their folds' checkpoints into it,
    and a resumed run reads them, so across nodes it must be on a shared file system."""
    w = world()
    if w.size == 1:
        with open_run() as run:
            yield run
        return
    with contextlib.ExitStack() as stack:
        with agreed():
            run = stack.enter_context(open_run()) if w.is_main else None
        opened = broadcast_json(run and {"dir": str(run.dir), "config": run.config, "resumed": run.resumed})
        if run is None:
            run = Run(Path(opened["dir"]), opened["config"], opened["resumed"], lock=None)  # rank 0 holds the lock
        with agreed():
            if not (run.dir / "config.json").is_file():
                raise ValueError(f"{run.dir}: rank 0's run directory is not visible on {socket.gethostname()}: "
                                 "--out must be a folder that every node sees at the same path (a shared file "
                                 "system)")
        yield run


def default_threads() -> int:
    """CPU threads per process when --threads is not given: the node's cores shared among its processes
    (torchrun sets OMP_NUM_THREADS=1, which would leave cores idle); 0, torch's default, for one process."""
    w = world()
    return max(1, len(os.sched_getaffinity(0)) // w.local_size) if w.size > 1 else 0


# --- one model on all processes: DistributedDataParallel -------------------------------------------------------

class SyncBatchNorm2d(torch.nn.BatchNorm2d):
    """torch.nn.SyncBatchNorm for the CPU, where torch's runs on GPUs only (and DDP refuses it): in
    training, normalise by the mean and variance of the global batch, as one process does on the whole
    batch. The sums are all-reduced with autograd, so the gradients reach the other processes' images too."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized()):
            return super().forward(x)
        from torch.distributed._functional_collectives import all_reduce  # with autograd: torch's advice

        self._check_input_dim(x)
        channels, xf = x.shape[1], x.float()
        count = torch.tensor([x.numel() / channels], dtype=torch.float64)
        sums = all_reduce(torch.cat([xf.sum((0, 2, 3), dtype=torch.float64),
                                     xf.square().sum((0, 2, 3), dtype=torch.float64), count]), "sum", dist.group.WORLD)
        n = sums[-1]
        mean = sums[:channels] / n
        var = sums[channels:-1] / n - mean.square()  # in float64: no cancellation to speak of
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = self.momentum if self.momentum is not None else 1 / self.num_batches_tracked.item()
                self.running_mean.lerp_(mean.float(), factor)
                self.running_var.lerp_((var * n / (n - 1)).float(), factor)
        scale = torch.rsqrt(var + self.eps).float()
        if self.affine:
            scale = scale * self.weight
        shift = -mean.float() * scale + (self.bias if self.affine else 0)
        return (xf * scale[:, None, None] + shift[:, None, None]).to(x.dtype)


def sync_batch_norm(model: torch.nn.Module) -> torch.nn.Module:
    """The model with its batch-norm layers synchronised over the processes, in place: the layers keep
    their parameters and running statistics (the optimizer's, the EMA's), so checkpoints are unchanged.
    On GPUs torch.nn.SyncBatchNorm; on the CPU SyncBatchNorm2d."""
    if next(model.parameters()).device.type != "cpu":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for module in model.modules():
        if type(module) is torch.nn.BatchNorm2d:
            module.__class__ = SyncBatchNorm2d  # a forward, no state of its own
        elif isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and type(module) is not SyncBatchNorm2d:
            raise ValueError(f"data-parallel training on the CPU synchronises BatchNorm2d layers, not "
                             f"{type(module).__name__}")
    return model


def data_parallel_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, label_smoothing: float = 0.0,
                       amp: bool = False, class_weights: torch.Tensor | None = None) -> Callable:
    """train.make_step for one model trained on every process: (the global batch, its labels) -> (this
    process's summed loss, correct count) after one optimizer step.

    Each process takes its share of the batch (`share`); DistributedDataParallel averages the gradients,
    and each process's summed loss is scaled by world size / global batch size, so the gradient is that of
    the mean loss over the whole batch, as on one process, even for a last batch that does not divide
    evenly (with class weights: by world size / the global batch's summed weights, their weighted mean). The
    baseline's hand-derived CPU step (fastpath.BaselineSGDStep) is not used: it adds its
    gradients straight into the momentum buffers inside its matrix products, where DDP cannot average
    them; autograd and DDP compute the same step.
    """
    from torch.nn.parallel import DistributedDataParallel  # only under torchrun

    w, device = world(), next(model.parameters()).device
    norms = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    ddp = DistributedDataParallel(sync_batch_norm(model), device_ids=[device.index] if device.type == "cuda" else None,
                                  forward_sync_buffers=False)  # synchronised batch norm keeps buffers equal
    log.info(f"data-parallel: {w.size} processes, each a 1/{w.size} share of every batch "
             f"(DistributedDataParallel{', SyncBatchNorm' if norms else ''})")

    def step(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        total = len(x) if class_weights is None else class_weights[y].sum()  # every process sees all of y
        lo, hi = share(len(x))
        n, x, y = len(x), x[lo:hi], y[lo:hi]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = ddp(x).float()
        loss = F.cross_entropy(logits, y, weight=class_weights, label_smoothing=label_smoothing, reduction="sum")
        optimizer.zero_grad(set_to_none=True)
        (loss * (w.size / total)).backward()
        optimizer.step()
        return (loss * (n / total)).detach(), (logits.argmax(1) == y).sum()
    return step


def loss_and_accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                      batch_size: int = 1000) -> tuple[float, float]:
    """inference.loss_and_accuracy over all processes: each scores its share, the sums are added up."""

    lo, hi = share(len(images))
    logits, y = predict_logits(model, images[lo:hi], batch_size), labels[lo:hi].cpu()
    sums = torch.tensor([F.cross_entropy(logits, y, reduction="sum").item(), (logits.argmax(1) == y).sum().item()],
                        dtype=torch.float64)
    all_reduce_sum(sums)
    loss, correct = sums.tolist()
    return loss / len(images), correct / len(images)
