"""A long fuzz run of predict's decoding and preprocessing (the bounded one is tests/test_fuzz.py).

    nice -n 19 python tests/fuzz_campaign.py --mutations 200000 --seed 1 --out /tmp/fuzz-crashes

Each mutated file goes through `predict.prepare`, as `fashion-cnn predict` and the web API use it, under a
memory cap (address space) and a time cap. A crash is anything but a one-line error or a finite 28x28 image
in [0, 1]: an exception escaping, running out of the memory cap, taking longer than the time cap. Each
crasher is saved to --out as crash-<seed format>-<index>.bin with a line in crashes.txt; add new kinds to
tests/fuzz_corpus/.
"""

from __future__ import annotations

import argparse
import resource
import signal
import sys
import time
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from fuzzing import mutate, seeds  # noqa: E402


class TooSlow(Exception):
    pass


def on_alarm(signum, frame):
    raise TooSlow


def check(result) -> str | None:
    """Why a Prediction is not a proper answer, or None."""
    if result.error is not None:
        return None if result.error and "\n" not in result.error else f"bad error text {result.error!r}"
    x = result.image
    if x is None or x.shape != (28, 28) or not np.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        return f"bad image {None if x is None else (x.shape, x.dtype)}"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mutations", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("fuzz-crashes"))
    parser.add_argument("--memory-mb", type=int, default=1500, help="address space allowed beyond the start")
    parser.add_argument("--seconds", type=int, default=10, help="time allowed per file")
    parser.add_argument("--max-edits", type=int, default=4, help="edits per mutation, at most")
    parser.add_argument("--size", type=int, nargs=2, default=(40, 30), metavar=("WIDTH", "HEIGHT"),
                        help="of the valid files mutated (over 1024 exercises the early shrink)")
    args = parser.parse_args()

    from fashion_cnn.evaluation.predict import prepare

    vm_size = int(Path("/proc/self/status").read_text().split("VmSize:")[1].split()[0]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm_size + args.memory_mb * 2**20, resource.RLIM_INFINITY))
    signal.signal(signal.SIGALRM, on_alarm)
    args.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    sources = list(seeds(*args.size).items())
    kinds: dict[str, int] = {}
    start = time.monotonic()
    with open(args.out / "crashes.txt", "a") as log:
        for i in range(args.mutations):
            name, seed_bytes = sources[i % len(sources)]
            data = mutate(seed_bytes, rng, args.max_edits)
            signal.alarm(args.seconds)
            try:
                problem = check(prepare(name, data, None, True))
            except TooSlow:
                problem = f"over {args.seconds} s"
            except BaseException as e:  # noqa: BLE001 - everything that escapes is what we look for
                if isinstance(e, KeyboardInterrupt):
                    raise
                frame = traceback.extract_tb(e.__traceback__)[-1]
                problem = f"{type(e).__name__} at {Path(frame.filename).name}:{frame.lineno}: {str(e)[:120]}"
            finally:
                signal.alarm(0)
            if problem is not None:
                kind = problem.split(":")[0] if " at " in problem else problem[:40]
                kinds[kind] = kinds.get(kind, 0) + 1
                (args.out / f"crash-{name}-{i}.bin").write_bytes(data)
                print(f"crash-{name}-{i}.bin\t{problem}", file=log, flush=True)
            if (i + 1) % 10_000 == 0:
                print(f"{i + 1} mutations, {sum(kinds.values())} crashes, {time.monotonic() - start:.0f} s",
                      flush=True)
    print(f"{args.mutations} mutations in {time.monotonic() - start:.0f} s; crashes by kind:")
    for kind, count in sorted(kinds.items(), key=lambda item: -item[1]):
        print(f"{count:6d}  {kind}")


if __name__ == "__main__":
    main()
