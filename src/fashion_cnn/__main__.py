"""`python -m fashion_cnn ...`: the command line, also as torchrun's entry point."""

import sys

from .cli import main

sys.exit(main())
