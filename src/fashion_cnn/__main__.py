"""`python -m fashion_cnn ...`: the command line, also as torchrun's entry point."""

import sys

from fashion_cnn.app.cli import main

sys.exit(main())
