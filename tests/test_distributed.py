"""torchrun on this machine: 2 processes on the CPU (gloo), launched with the `torchrun` command
(`python -m torch.distributed.run`), each test on a free port, compared with one process in this one."""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import make_dataset_dir

import fashion_cnn
from fashion_cnn.app.cli import main
from fashion_cnn.jobs import crossval
from fashion_cnn.models import fastpath
from fashion_cnn.models.files import load_model
from fashion_cnn.training import distributed

SRC = Path(fashion_cnn.__file__).resolve().parent
HARNESS = Path(__file__).with_name("torchrun_harness.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_command(*args: str, script: Path | None = None) -> list[str]:
    """`torchrun --nproc-per-node 2 -m fashion_cnn ARGS` (or the script), with this tree's package."""
    target = ["-m", "fashion_cnn"] if script is None else [str(script)]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
            "--master-port", str(free_port()), *target, *args]


def child_env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC.parent), os.environ.get("PYTHONPATH", "")])}


def torchrun(*args: str, script: Path | None = None, ok: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(torchrun_command(*args, script=script), env=child_env(), capture_output=True, text=True,
                            timeout=600)
    assert (result.returncode == 0) == ok, result.stderr[-4000:]
    return result


def only_run(root: Path) -> Path:
    [run_dir] = root.iterdir()  # the other processes made no run directory of their own
    return run_dir


def weights(root: Path) -> torch.Tensor:
    """All floating-point tensors of the model a train run under root saved, as one vector."""
    model, _ = load_model(only_run(root) / "model.safetensors")
    return torch.cat([t.flatten().double() for t in model.state_dict().values() if t.is_floating_point()])


def distance(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def common_args(data_dir: Path) -> list[str]:
    return ["--data", str(data_dir), "--device", "cpu", "--threads", "1"]


# Tolerances, relative L2 distance of all weights to one process's run with the same global batch:
# - baseline: one process takes the hand-derived step and C kernel (fastpath.py), the distributed run
#   autograd and DDP: the same arithmetic in another order (measured: 1.7e-8 after 14 steps).
# - fast (bfloat16 autocast off: its rounding would swamp what is tested): each process computes half of
#   each batch and batch-norm sums add up in another order; where a ReLU or max-pool input sits at a kink, a
#   difference in the last bit sends a gradient elsewhere, and 4 steps at the recipe's learning rate grow
#   that to 3.6e-3 here. What the tolerance rejects, measured: local batch norm instead of SyncBatchNorm
#   0.029; each process treating its half as the whole batch, below.
# Every run ends on a batch that does not divide evenly: 193 = 6 x 32 + 1 gives one process one image and
# the other none; 197 = 3 x 64 + 5 splits 2 and 3. The baseline's case is run killed and resumed, below
# (each torchrun costs the suite about 12 CPU seconds, most of it three processes importing torch).
TRAIN_CASES = {
    "baseline": (["--limit", "193", "--epochs", "6"], 32, 1e-5),
    "fast": (["--model", "fast", "--no-amp", "--limit", "197", "--batch-size", "64", "--epochs", "1"], 64, 1e-2),
}


def assert_one_process_on_the_global_batch(root: Path, args: list[str], case: str) -> None:
    """The two-process train run under root/"two" matches one process on the same global batch, and not
    one on half of it; its log and metrics are the run's whole."""
    extra, batch, tolerance = TRAIN_CASES[case]
    assert main([*args, "--out", str(root / "one")]) == 0
    assert main([*args, "--batch-size", str(batch // 2), "--out", str(root / "halves")]) == 0
    two = weights(root / "two")
    assert distance(two, weights(root / "one")) < tolerance
    assert distance(two, weights(root / "halves")) > 10 * tolerance  # the tolerance tells batches apart
    run_dir = only_run(root / "two")
    assert "data-parallel: 2 processes" in (run_dir / "log.txt").read_text()
    assert len((run_dir / "metrics.csv").read_text().splitlines()) == 1 + int(extra[extra.index("--epochs") + 1])


def test_data_parallel_train_equals_one_process_on_the_global_batch(tiny_data_dir, tmp_path):
    args = ["train", *common_args(tiny_data_dir), *TRAIN_CASES["fast"][0]]
    torchrun(*args, "--out", str(tmp_path / "two"))
    assert_one_process_on_the_global_batch(tmp_path, args, "fast")


def test_one_process_is_as_before(tiny_data_dir, tmp_path, monkeypatch):
    """Without torchrun: no process group, and the baseline trains with its hand-derived step."""
    calls = []
    real = fastpath.BaselineSGDStep.__call__
    monkeypatch.setattr(fastpath.BaselineSGDStep, "__call__", lambda self, x, y: calls.append(1) or real(self, x, y))
    assert main(["train", *common_args(tiny_data_dir), "--epochs", "1", "--out", str(tmp_path)]) == 0
    assert len(calls) == 7  # 200 images, batch 32
    assert distributed.world().size == 1 and not torch.distributed.is_initialized()


def metrics_without_timings(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv") as f:
        return [{k: v for k, v in row.items() if not k.endswith("seconds")} for row in csv.DictReader(f)]


def test_cv_spreads_folds_with_one_process_numbers_and_resumes_anywhere(tiny_data_dir, tmp_path, monkeypatch):
    # 3 folds on 2 processes: rank 0 trains folds 1 and 3, rank 1 fold 2; same --threads, same numbers
    # (a small learning rate: the stratified folds of these easy images all reach 100% at the default)
    args = ["cv", *common_args(tiny_data_dir), "--folds", "3", "--epochs", "1", "--lr", "0.003"]
    torchrun(*args, "--out", str(tmp_path / "two"))
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    two, one = only_run(tmp_path / "two"), only_run(tmp_path / "one")
    results = json.loads((two / "cv_results.json").read_text())
    assert results["fold_accuracies"] == json.loads((one / "cv_results.json").read_text())["fold_accuracies"]
    assert len(set(results["fold_accuracies"])) > 1  # not all 100%: the comparison means something
    assert metrics_without_timings(two) == metrics_without_timings(one)  # every epoch's losses, to the bit
    assert "fold 2/3: accuracy" in (two / "log.txt").read_text()  # rank 1's fold, logged by rank 0
    assert {p.name for p in two.glob("checkpoint-fold*")} == {f"checkpoint-fold{k}.safetensors" for k in (1, 2, 3)}

    # resumed by one process, the folds that either process finished are not trained again
    monkeypatch.setattr(crossval, "fit", lambda *a, **k: pytest.fail("a finished fold was trained again"))
    assert main(["cv", "--resume", str(two)]) == 0
    assert json.loads((two / "cv_results.json").read_text())["fold_accuracies"] == results["fold_accuracies"]


def worker_pids(pid: int) -> list[int]:
    """The processes torchrun started (each in its own session, so a kill of torchrun alone misses them)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in children.read_text().split()] if children.exists() else []


def test_killed_data_parallel_run_resumes_as_one_process_on_the_global_batch(tiny_data_dir, tmp_path):
    args = ["train", *common_args(tiny_data_dir), *TRAIN_CASES["baseline"][0]]
    out = tmp_path / "two"
    proc = subprocess.Popen(torchrun_command(*args, "--out", str(out)), env=child_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while not list(out.glob("*/checkpoint.safetensors")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    workers = worker_pids(proc.pid)
    for pid in [*workers, proc.pid]:  # as an out-of-memory kill or a power cut would: no cleanup, no message
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    run_dir = only_run(out)
    assert len(workers) == 2 and not (run_dir / "model.safetensors").exists()  # killed mid-run

    torchrun("train", "--resume", str(run_dir))  # both processes load the checkpoint
    assert "resuming after epoch" in (run_dir / "log.txt").read_text()
    assert_one_process_on_the_global_batch(tmp_path, args, "baseline")


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    """Our error lines; torchrun adds its own report of the failed processes (with its own traceback)."""
    assert f'File "{SRC}' not in result.stderr, result.stderr  # no traceback from fashion-cnn in any process
    return [line for line in result.stderr.splitlines() if line.startswith("fashion-cnn: error:")]


@pytest.mark.parametrize("rank1_data", ["missing", "other"])
def test_a_node_without_the_data_stops_every_process(rank1_data, tiny_data_dir, tmp_path, monkeypatch):
    other = tmp_path / rank1_data
    if rank1_data == "other":
        make_dataset_dir(other, n_train=150)
    monkeypatch.setenv("RANK1_DATA", str(other))
    result = torchrun("cv", *common_args(tiny_data_dir), "--folds", "2", "--out", str(tmp_path / "runs"),
                      script=HARNESS, ok=False)
    [line] = error_lines(result)
    expected = "no such" if rank1_data == "missing" else "read other data than rank 0"
    assert "rank 1 (" in line and expected in line, line
    assert not (tmp_path / "runs").exists()  # nothing was started


@pytest.mark.parametrize("job, rank1, named", [
    ("train", "--epochs 2 --lr 0.05", "--epochs 2 (rank 0: 1), --lr 0.05 (rank 0: 0.01)"),  # a hang, a model unlike both
    ("cv", "--seed 7 --threads 2", "--seed 7 (rank 0: 1);")])  # --threads is each node's own
def test_a_process_with_other_options_stops_every_process(job, rank1, named, tiny_data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("RANK1_ARGS", rank1)
    folds = ["--folds", "2"] if job == "cv" else []
    result = torchrun(job, *common_args(tiny_data_dir), "--epochs", "1", *folds, "--out", str(tmp_path / "runs"),
                      script=HARNESS, ok=False)
    [line] = error_lines(result)
    assert line.startswith("fashion-cnn: error: rank 1 (") and "runs other options than rank 0 (" in line, line
    assert named in line, line
    assert not (tmp_path / "runs").exists()  # refused before the run began


def test_checks_for_a_world_of_two(monkeypatch):
    """The checks a bad setup fails, each with the one line that rank 0 prints (as the data check above)."""
    monkeypatch.setattr(distributed, "_world", distributed.World(rank=1, size=2, local_size=2))
    distributed.check_global_batch(64)
    with pytest.raises(ValueError, match="--batch-size 33 is the global batch, shared by 2 processes: it must be "
                                         "a multiple of 2"):
        distributed.check_global_batch(33)
    distributed.check_folds(2)
    with pytest.raises(ValueError, match="2 processes for --folds 1 would leave 1 idle"):
        distributed.check_folds(1)
    assert distributed.share(5) == (2, 5) and distributed.share(1) == (0, 1)
    assert distributed.default_threads() == max(1, len(os.sched_getaffinity(0)) // 2)
