import json
import logging
import os
import subprocess
import sys
import time

import pytest
import torch

from fashion_cnn import machine

STAT = """cpu  1000 50 300 5000 100 10 20 5 0 0
cpu0 600 50 200 2000 50 5 10 5 0 0
cpu1 400 0 100 3000 50 5 10 0 0 0
intr 12345
"""


def test_cpu_ticks_count_busy_and_total_time_of_the_chosen_cpus():
    # busy: user + nice + system + irq + softirq + steal; total adds idle and iowait
    assert machine.cpu_ticks(None, STAT) == (1000 + 50 + 300 + 10 + 20 + 5, 1385 + 5000 + 100)
    assert machine.cpu_ticks([1], STAT) == (400 + 100 + 5 + 10, 515 + 3000 + 50)
    assert machine.cpu_ticks([0, 1], STAT) == machine.cpu_ticks(None, STAT)
    assert machine.cpu_ticks([7], STAT) == (0, 0)


def test_other_processes_share_is_what_the_machine_used_minus_this_process():
    tick = os.sysconf("SC_CLK_TCK")
    before = machine.Snapshot(busy=0, total=0, own=10.0, wall=0.0)
    # 2 CPUs for 1 s: 2 s of CPU time, 1.5 s of it busy, 0.5 s of that ours
    after = machine.Snapshot(busy=int(1.5 * tick), total=2 * tick, own=10.5, wall=1.0)
    assert machine.other_cpu_share(before, after) == pytest.approx(0.5)
    assert machine.other_cpu_share(before, before) == 0.0  # no time passed: nothing to tell
    ours_only = machine.Snapshot(busy=int(0.5 * tick), total=2 * tick, own=10.6, wall=1.0)
    assert machine.other_cpu_share(before, ours_only) == 0.0  # never below zero


RANK = """
import dataclasses, json, os, sys, time
spinner = int(sys.argv[2])
os.environ["LOCAL_WORLD_SIZE"] = sys.argv[1]
from fashion_cnn import machine
siblings = machine.sibling_ranks()
since, own, spun = machine.cpu_snapshot(), machine.own_cpu_seconds(), machine.process_cpu_seconds(spinner)
time.sleep(1.0)
now = machine.cpu_snapshot()
alone = machine.other_cpu_share(dataclasses.replace(since, own=own),
                                dataclasses.replace(now, own=machine.own_cpu_seconds()))
spun = (machine.process_cpu_seconds(spinner) - spun) / ((now.total - since.total) / os.sysconf("SC_CLK_TCK"))
print(json.dumps({"siblings": siblings, "spinner": spinner, "job": machine.other_cpu_share(since, now),
                  "alone": alone, "spun": spun}))
"""
PARENT = """
import subprocess, sys
spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # the rank's sibling
try:
    sys.exit(subprocess.run([sys.executable, "-c", sys.argv[1], sys.argv[2], str(spinner.pid)]).returncode)
finally:
    spinner.kill()
"""


def rank_sees(local_world_size: int) -> dict:
    """What a process (RANK) counts as other processes' load while its sibling spins."""
    out = subprocess.run([sys.executable, "-c", PARENT, RANK, str(local_world_size)], capture_output=True,
                         text=True, timeout=60)
    return json.loads(out.stdout)


def test_under_torchrun_sibling_ranks_are_not_other_processes():
    seen = rank_sees(2)  # under torchrun: the spinning sibling is another rank of the same job
    assert seen["siblings"] == [seen["spinner"]] and seen["spun"] > 0.01
    assert seen["job"] == pytest.approx(seen["alone"] - seen["spun"], abs=0.03)  # its time is the job's
    seen = rank_sees(1)  # without: another process, as any
    assert seen["siblings"] == [] and seen["job"] == seen["alone"]


@pytest.mark.parametrize("others, usable, most, threads", [
    (0.0, 2, 2, 2), (0.3, 2, 2, 2), (0.6, 2, 2, 1), (0.95, 2, 2, 1), (1.9, 2, 2, 1),
    (0.0, 16, 4, 4), (12.2, 16, 16, 4), (0.0, 2, 1, 1)])
def test_one_thread_per_free_core(others, usable, most, threads):
    assert machine.threads_for(others, usable, most) == threads


def test_meter_sees_a_busy_process_and_not_this_one():
    meter = machine.LoadMeter()
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(1.0)
        others = meter.read()
    finally:
        spinner.kill()
        spinner.wait()
    assert others >= 0.6  # the spinner: most of a core (other engineers' work may add to it)

    own0, t0 = machine.own_cpu_seconds(), time.monotonic()
    while time.monotonic() - t0 < 0.5:  # this process keeps a core busy: not "other processes"
        pass
    own = (machine.own_cpu_seconds() - own0) / (time.monotonic() - t0)
    assert meter.read() + own <= len(meter.cpus) + 0.3  # clock ticks are 10 ms: some rounding


class ScriptedMeter(machine.LoadMeter):
    """A meter on 2 cores whose readings are given in advance."""

    def __init__(self, readings: list[float]) -> None:
        super().__init__()
        self.cpus, self.readings = [0, 1], list(readings)

    def read(self) -> float:
        return self.readings.pop(0)


@pytest.fixture
def job(monkeypatch, threads):
    """start_job_threads with a scripted meter, re-checking the load at every step."""
    monkeypatch.setattr(machine, "CHECK_SECONDS", 0.0)
    monkeypatch.setattr(machine, "default_threads", lambda: 2)

    def start(requested: int, readings: list[float]) -> machine.JobThreads:
        monkeypatch.setattr(machine, "_meter", ScriptedMeter(readings))
        return machine.start_job_threads(requested)
    return start


def test_a_contended_start_warns_in_one_line(job, caplog):
    with caplog.at_level(logging.INFO, logger="fashion_cnn"):
        job(0, [0.95])
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert record.getMessage().startswith("other processes use 95% of a core: this job will run slower")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="fashion_cnn"):
        job(0, [0.1])
    assert not caplog.records


def test_adapting_threads_follow_the_load_and_asked_for_ones_stay(job, caplog):
    job(0, [0.95, 0.97, 0.1, 1.6])
    assert torch.get_num_threads() == 2  # until a step that may adapt
    seen = []
    with caplog.at_level(logging.INFO, logger="fashion_cnn"):
        for _ in range(4):
            machine.adapt_threads()
            seen.append(torch.get_num_threads())
    assert seen == [1, 1, 2, 1]  # the start's measurement first, then one reading per check
    assert [r.getMessage().split(": ")[1] for r in caplog.records if r.levelno == logging.INFO] == [
        "training on 1 CPU thread (its results do not depend on the count)",
        "training on 2 CPU threads (its results do not depend on the count)",
        "training on 1 CPU thread (its results do not depend on the count)"]
    assert machine.job_threads().describe() == "1-2 threads (following the load)"

    job(2, [0.95, 1.5])  # --threads 2: kept, whatever the load
    machine.adapt_threads()
    assert torch.get_num_threads() == 2
    assert machine.job_threads().describe() == "2 threads"


def test_denormals_are_flushed_on_openmp_threads_started_before(threads):
    torch.set_flush_denormal(False)
    threads(8)  # more threads than ever before here: new ones start with this thread's (unflushed) state
    tiny = torch.full((8 * 65536,), 1e-30)
    assert (tiny * 1e-10 != 0).any()  # denormal results, on the new threads at least
    machine.flush_denormals()
    assert (tiny * 1e-10 == 0).all()  # flushed to zero on all 8 threads' shares, not only this thread's


@pytest.mark.parametrize("others, spin", [(1.0, "0"), (0.1, "300000")])
def test_openmp_threads_wait_passively_on_a_busy_machine(others, spin):
    """prepare_openmp must act before torch loads libgomp, which reads its settings once (printed here by
    OMP_DISPLAY_ENV): a waiting thread then sleeps at once. A quiet machine keeps the default, 300,000
    spins before sleeping."""
    code = ("from fashion_cnn import machine\n"
            f"machine.LoadMeter.read = lambda self: {others}\n"
            "machine.prepare_openmp(0)\n"
            "import torch\n")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    out = subprocess.run([sys.executable, "-c", code], env=env | {"OMP_DISPLAY_ENV": "verbose"},
                         capture_output=True, text=True, check=True)
    assert f"GOMP_SPINCOUNT = '{spin}'" in out.stderr


def test_openmp_settings_are_left_alone_where_set_or_too_late(monkeypatch):
    monkeypatch.setattr(machine.LoadMeter, "read", lambda self: 2.0)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert not machine.prepare_openmp(0)  # torch is loaded in this process: too late to matter
    assert "OMP_WAIT_POLICY" not in os.environ


@pytest.mark.parametrize("flags, device, driver, native", [
    ("fpu avx512f avx512_bf16 amx_bf16 amx_tile", "cpu", False, True),  # Sapphire Rapids: AMX
    ("fpu avx512f avx512_bf16", "cpu", False, False),  # AVX-512 with bf16 dot products, no AMX: emulated
    ("fpu avx2", "auto", False, False),
    ("fpu avx2", "auto", True, True),  # auto takes the GPU
    ("fpu avx2", "cuda", False, True),
    ("fpu avx2", "cpu", True, False),  # the GPU is not used
])
def test_bfloat16_is_native_on_a_gpu_and_on_cpus_with_amx(monkeypatch, tmp_path, flags, device, driver, native):
    monkeypatch.setattr(machine, "cpuinfo_line", lambda *keys: f"flags\t\t: {flags}" if "flags" in keys else "")
    (tmp_path / "version").touch()
    monkeypatch.setattr(machine, "NVIDIA_DRIVER", tmp_path / ("version" if driver else "absent"))
    assert machine.bf16_native(device) is native
