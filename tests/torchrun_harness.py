"""`python -m fashion_cnn ARGS` for torchrun, except on rank 1: it reads `--data $RANK1_DATA` (a node without
the data, or with other data than rank 0's), and takes the options in $RANK1_ARGS after the others (a process
started with other options) (tests/test_distributed.py)."""

import os
import shlex
import sys

from fashion_cnn.app.cli import main

args = sys.argv[1:]
if os.environ["RANK"] == "1":
    if "RANK1_DATA" in os.environ:
        args[args.index("--data") + 1] = os.environ["RANK1_DATA"]
    args += shlex.split(os.environ.get("RANK1_ARGS", ""))
sys.exit(main(args))
