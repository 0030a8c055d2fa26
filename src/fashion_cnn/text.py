"""User text made safe to show: on a terminal (printable) and in a matplotlib figure (plain)."""

from __future__ import annotations

import re

# C0 and C1 controls, DEL, Unicode line and paragraph separators, and lone surrogates (bytes of a file
# name that are not UTF-8, as Python decodes them): each could end a line, move the cursor, or fail to print.
UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def printable(text: str) -> str:
    r"""text with unprintable characters escaped as Python would write them (\n, \x1b, \udcff): a file
    name cannot start a new line of output or send a terminal escape sequence."""
    return UNPRINTABLE.sub(lambda m: repr(m.group())[1:-1], text)


def plain(text: str) -> str:
    """Text from outside (class, file, run and option names, option values) as a figure shows it, letter
    for letter: matplotlib reads text between two `$` as mathtext, where `$10_to_$20` is a syntax error
    that kills the job. An escaped `\\$` starts no mathtext and is drawn as `$`."""
    return text.replace("$", r"\$")
