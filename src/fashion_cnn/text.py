"""User text made safe to show: on a terminal (printable) and in a matplotlib figure (plain)."""

from __future__ import annotations


def printable(text: str) -> str:
    r"""Untrusted text (file, folder, class and option names) safe to print: every character Python does not
    call printable escaped as Python would write it (\n, \x1b, \u202e, \udcff). Controls, line and
    paragraph separators, format characters (a right-to-left override reverses what follows) and lone
    surrogates (bytes of a file name that are not UTF-8): none can start a line of output, move the cursor,
    hide or reorder text, or fail to print."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def plain(text: str) -> str:
    """Text from outside (class, file, run and option names, option values) as a figure shows it, letter
    for letter: matplotlib reads text between two `$` as mathtext, where `$10_to_$20` is a syntax error
    that kills the job. An escaped `\\$` starts no mathtext and is drawn as `$`."""
    return text.replace("$", r"\$")
