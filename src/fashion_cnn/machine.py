"""The machine this process runs on, in one place: its CPU, how busy other processes keep it, and the
CPU threads and floating-point settings chosen from that.

Two cores shared with other work are the normal case on a laptop. OpenMP splits each parallel region
into fixed shares and waits for the slowest thread, so a thread that shares its core with another busy
process stalls every region: two threads then run several times slower than one. A job with `--threads`
unset (0) therefore measures, from /proc/stat, how many cores other processes keep busy, warns when they
do, lets OpenMP's idle threads sleep instead of spin if they do at the start (prepare_openmp), and lets a
step whose results do not depend on its thread count (fastpath.BaselineSGDStep with the C kernel) move
between one thread per free core and torch's default as the load changes (adapt_threads).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

log = logging.getLogger("fashion_cnn")

BUSY_CORE = 0.5  # other processes using at least this many cores make the machine "contended"
CHECK_SECONDS = 0.5  # how often an adapting step re-measures the load
MAX_THREADS = 1024  # more CPU threads than the largest machines have cores: a typo, which OpenMP would try to start


# --- the CPU -----------------------------------------------------------------------------------------

def cpuinfo_line(*keys: str) -> str:
    """The first /proc/cpuinfo line starting with one of keys ('' where there is none, as off Linux)."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    return next((line for line in lines if line.startswith(keys)), "")


def cpu_model() -> str:
    """The CPU's name, as /proc/cpuinfo gives it ('CPU' where it does not)."""
    return cpuinfo_line("model name").partition(":")[2].strip() or "CPU"


NVIDIA_DRIVER = Path("/proc/driver/nvidia/version")  # there while NVIDIA's kernel driver is loaded


def bf16_native(device: str) -> bool:
    """Whether bfloat16 autocast speeds training up on device ('cpu', 'cuda' or 'auto'): on a GPU, and on a
    CPU with AMX. Other CPUs emulate bfloat16 matrix products, slower than float32: measured on a 2-core
    AVX-512 Xeon without AMX, an epoch of the strong model took 1.36x as long, of the fast one 1.26x
    (benchmarks/results/bf16.json). 'auto'
    counts as a GPU where an NVIDIA driver is loaded (the check runs without importing torch)."""
    gpu = device == "cuda" or (device == "auto" and NVIDIA_DRIVER.exists())
    return gpu or "amx_bf16" in cpuinfo_line("flags").split()


def cpu_signature() -> bytes:
    """What a -march=native build depends on: a cache shared between machines must not mix them."""
    return (platform.machine() + cpuinfo_line("flags", "Features")).encode()


def usable_cpus() -> list[int]:
    """The CPUs this process may run on (its affinity), which is what its threads compete for."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


# --- the load: what other processes use --------------------------------------------------------------

def cpu_ticks(cpus: list[int] | None = None, stat: str | None = None) -> tuple[int, int]:
    """(busy, total) clock ticks since boot of the given CPUs (all of them when None), from /proc/stat;
    (0, 0) where there is no /proc/stat. Busy includes time stolen by a hypervisor: it was not ours."""
    if stat is None:
        path = Path("/proc/stat")
        if not path.exists():
            return 0, 0
        stat = path.read_text()
    names = {"cpu"} if cpus is None else {f"cpu{c}" for c in cpus}
    busy = total = 0
    for line in stat.splitlines():
        name, *values = line.split()
        if name in names:
            # user nice system idle iowait irq softirq steal (guest time is already counted in user)
            user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in (values + ["0"] * 8)[:8])
            busy += user + nice + system + irq + softirq + steal
            total += user + nice + system + idle + iowait + irq + softirq + steal
    return busy, total


def own_cpu_seconds() -> float:
    """CPU seconds used by this process (all its threads) and its finished children."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def process_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) of a running process, from /proc; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def env_rank() -> int:
    """This process's rank as torchrun set it (0 without torchrun), read before any process group exists."""
    return int(os.environ.get("RANK", "0"))


def sibling_ranks() -> list[int]:
    """Under torchrun with several processes on this machine: the other ranks' pids (torchrun's other
    children), which share its cores by design and are no competing load. [] otherwise."""
    if int(os.environ.get("LOCAL_WORLD_SIZE", "1")) <= 1:
        return []
    parent = os.getppid()
    children = Path(f"/proc/{parent}/task/{parent}/children")
    try:
        return [int(p) for p in children.read_text().split() if int(p) != os.getpid()]
    except OSError:
        return []


def job_cpu_seconds() -> float:
    """CPU seconds of this job on this machine: this process's, and its sibling ranks' under torchrun."""
    return own_cpu_seconds() + sum(process_cpu_seconds(pid) for pid in sibling_ranks())


@dataclass(frozen=True)
class Snapshot:
    """CPU time so far: the machine's (busy and total clock ticks of some CPUs) and this job's."""

    busy: int  # ticks
    total: int  # ticks
    own: float  # seconds: this process's, with its sibling ranks' under torchrun (job_cpu_seconds)
    wall: float  # seconds (monotonic)


def cpu_snapshot(cpus: list[int] | None = None) -> Snapshot:
    """The CPU time of the given CPUs (all when None) and of this job (job_cpu_seconds), now."""
    return Snapshot(*cpu_ticks(cpus), job_cpu_seconds(), time.monotonic())


def other_cpu_share(since: Snapshot, now: Snapshot | None = None) -> float:
    """Share of the CPUs' time (0 to 1) that processes other than this job (this one, its children, its
    sibling ranks) used between two snapshots of the same CPUs (now: all CPUs, now): 0 means the machine
    was otherwise quiet."""
    now = now or cpu_snapshot()
    if now.total <= since.total:
        return 0.0
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    others = (now.busy - since.busy) / tick - (now.own - since.own)
    return min(1.0, max(0.0, others / ((now.total - since.total) / tick)))


class LoadMeter:
    """How many of this process's usable cores other processes kept busy, between one reading and the next."""

    def __init__(self) -> None:
        self.cpus = usable_cpus()
        self.last = cpu_snapshot(self.cpus)

    def seconds(self) -> float:
        """Seconds since the last reading."""
        return time.monotonic() - self.last.wall

    def read(self) -> float:
        """Cores used by others since the last reading (or since the meter started); starts a new interval."""
        now = cpu_snapshot(self.cpus)
        cores = other_cpu_share(self.last, now) * len(self.cpus)
        self.last = now
        return cores


def threads_for(others: float, usable: int, most: int) -> int:
    """One thread per core that other processes leave free (at least one, at most `most`): a thread that
    must share its core stalls each parallel region of the others."""
    return max(1, min(most, round(usable - others)))


def describe_load(others: float, usable: int) -> str:
    """'other processes use 95% of a core', or '... 1.6 of this machine's 2 cores' from 1.5 cores on."""
    return f"other processes use {100 * others:.0f}% of a core" if others < 1.5 else \
        f"other processes use {others:.1f} of this machine's {usable} cores"


# --- the threads of a job ----------------------------------------------------------------------------
# torch is imported where it is used: the command line imports this module before torch.

@functools.cache
def default_threads() -> int:
    """torch's own thread count (one per core, or OMP_NUM_THREADS), as it was before the first job."""
    import torch  # torch costs seconds of start-up: `--help` and the CLI's first lines go without it

    return torch.get_num_threads()


class JobThreads:
    """The CPU threads of one training job: the count it asked for, or (0) torch's default, which a step
    whose results do not depend on it moves to one per free core as the load changes (adapt)."""

    def __init__(self, requested: int, meter: LoadMeter) -> None:
        import torch  # torch costs seconds of start-up: `--help` and the CLI's first lines go without it

        self.auto = requested == 0
        self.most = requested or default_threads()
        self.meter = meter
        self.others = 0.0
        self.next_check = 0.0  # the first adapt() acts on the load measured at the start
        self.used = {self.most}
        torch.set_num_threads(self.most)

    def measure_start(self, min_seconds: float = 0.25) -> None:
        """The load since the meter started (over min_seconds at least), with one warning line if other
        processes keep a core or more of it busy."""
        time.sleep(max(0.0, min_seconds - self.meter.seconds()))
        self.others = self.meter.read()
        if self.others >= BUSY_CORE:
            log.warning(f"{describe_load(self.others, len(self.meter.cpus))}: this job will run slower than "
                        "on a quiet machine")

    def adapt(self) -> None:
        """Set torch's threads from the load, at most every CHECK_SECONDS: only for a caller whose results
        are the same on any number of threads."""
        import torch  # torch costs seconds of start-up: `--help` and the CLI's first lines go without it

        now = time.monotonic()
        if not self.auto or now < self.next_check:
            return
        if self.next_check:
            self.others = self.meter.read()
        self.next_check = now + CHECK_SECONDS
        threads = threads_for(self.others, len(self.meter.cpus), self.most)
        if threads != torch.get_num_threads():
            log.info(f"{describe_load(self.others, len(self.meter.cpus))}: training on {threads} "
                     f"CPU thread{'s' * (threads > 1)} (its results do not depend on the count)")
            torch.set_num_threads(threads)
            self.used.add(threads)

    def describe(self) -> str:
        """The threads the job used, for reports: '2 threads', or '1-2 threads (following the load)'."""
        low, high = min(self.used), max(self.used)
        return f"{high} thread{'s' * (high > 1)}" if low == high else f"{low}-{high} threads (following the load)"


_meter = LoadMeter()  # from the import on: a job's start measures what happened while it set up
_job: JobThreads | None = None


def start_job_threads(requested: int) -> JobThreads:
    """Called as a job starts: flushes denormals, sets torch's threads (the requested count, else torch's
    default), warns if other processes keep the machine busy, and returns the job's thread settings."""
    global _meter, _job
    default_threads()  # before any job sets another count
    flush_denormals()
    _job = JobThreads(requested, _meter)
    _job.measure_start()
    _meter = LoadMeter()  # the next job in this process measures from here
    return _job


@contextlib.contextmanager
def threads_for_job(requested: int) -> Iterator[JobThreads]:
    """A job's threads (start_job_threads) for the length of the block; after it, the caller's thread
    count again, and no job for adapt_threads to follow (fit called outside a job keeps its threads)."""
    global _job
    import torch  # torch costs seconds of start-up: `--help` and the CLI's first lines go without it

    before = torch.get_num_threads()
    try:
        yield start_job_threads(requested)
    finally:
        _job = None
        torch.set_num_threads(before)


def job_threads() -> JobThreads | None:
    """The settings of the job running in this process, if any."""
    return _job


def adapt_threads() -> None:
    """For a step whose results do not depend on the thread count: follow the load (JobThreads.adapt)."""
    if _job is not None:
        _job.adapt()


# --- OpenMP's waiting threads -------------------------------------------------------------------------

def prepare_openmp(seconds: float = 0.25) -> bool:
    """Before torch is imported (libgomp reads its settings once, as it loads): if other processes keep a
    core or more busy, let OpenMP threads that wait for work sleep instead of spinning, and return True.

    By default a waiting thread spins for milliseconds: on a quiet machine that saves the wake-up at every
    parallel region, but on a busy one the spinning thread takes its core from the thread that has work.
    Measured under load (other engineers' jobs on both cores): the fast model at 2 threads took 37-52 s
    per epoch spinning, 10.4 s sleeping, 11.8 s on one thread. The setting changes no result; a quiet
    machine keeps the default. Nothing is changed where the user set OMP_WAIT_POLICY or GOMP_SPINCOUNT.
    """
    if "torch" in sys.modules or {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"} & set(os.environ):
        return False
    meter = LoadMeter()
    time.sleep(seconds)
    if meter.read() < BUSY_CORE:
        return False
    os.environ["OMP_WAIT_POLICY"] = "passive"
    return True


# --- denormal numbers ---------------------------------------------------------------------------------

def flush_denormals() -> None:
    """Flush denormal numbers to zero on this thread and on every OpenMP thread of torch's pool.

    Denormals (tiny gradients late in training) slow CPU arithmetic many times over. The flag lives in
    each thread's MXCSR register: torch.set_flush_denormal sets the calling thread's, threads started
    later inherit it, but OpenMP threads started earlier keep theirs, and a share of the work computed
    without the flag would make results depend on what the process did before the job.
    """
    import torch  # torch costs seconds of start-up: `--help` and the CLI's first lines go without it

    torch.set_flush_denormal(True)
    gomp = openmp_runtime()
    if gomp is None:
        return
    threads = max(torch.get_num_threads(), default_threads(), os.cpu_count() or 1)
    each = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(lambda _: torch.set_flush_denormal(True))
    gomp.GOMP_parallel(each, None, ctypes.c_uint(threads), ctypes.c_uint(0))


@functools.cache
def openmp_runtime() -> ctypes.CDLL | None:
    """GNU OpenMP (libgomp) as torch loaded it, or None where torch uses another runtime or none."""
    try:
        gomp = ctypes.CDLL("libgomp.so.1", mode=os.RTLD_NOLOAD | os.RTLD_GLOBAL)
        gomp.GOMP_parallel.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
        gomp.GOMP_parallel.restype = None
        return gomp
    except (OSError, AttributeError):
        return None
