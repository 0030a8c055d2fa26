"""`python -m fashion_cnn ARGS` for torchrun, except that rank 1 reads `--data $RANK1_DATA`: a node without
the data, or with other data than rank 0's (tests/test_distributed.py)."""

import os
import sys

from fashion_cnn.cli import main

args = sys.argv[1:]
if os.environ["RANK"] == "1":
    args[args.index("--data") + 1] = os.environ["RANK1_DATA"]
sys.exit(main(args))
