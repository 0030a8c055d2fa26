"""Every figure the README and the documentation quote comes from a benchmark's result file, named in the
same section: a stale or unbacked number fails here (issue 23: "every figure has its file").

What counts as a figure (outside fenced code blocks, inline code, HTML comments, link targets and
headings, which show commands, options and names rather than measurements):

- in prose: a number with a decimal point (0.673, 91.04, 1.7e-8), or one followed by a unit: `%`, a
  ratio's `x` (3.89x; not 28x28, a size), `s`, `ms`, `min`, `minutes`, `MB`, `MiB`, `GB`, `GFLOP/s`,
  `MFLOP`, `GFLOP`, `/s` (images/s, requests/s), `points`; a range (2.9-4.1 s) gives each end;
- in a table's body cells (not its header row, nor its first column, which names the row): every number;
- not a figure: a number inside a word or a name (ResNet-14, bf16, fc2, layers.2), a version (3.15.1), a
  date, a size (28x28, 300x400), and the settings and limits listed in NOT_MEASURED (a recipe's learning
  rate, a request's size limit): those are choices the code makes, not measurements.

A figure is found in a file when some number stored there (any number in the JSON, strings included; any
number in a .csv or .md), scaled as the unit allows (a fraction as a percent, seconds as minutes or
milliseconds, bytes as MB or MiB), rounds to the figure at the precision shown: 91.04% matches 0.91037,
1.82 s matches 1.8195 (162,000 shows a rounding to thousands). Where a section names two small files
(two runs), the mean of one number from each also matches. A difference or ratio ("+0.32 points", a
signed figure, "3.89x") also passes when it is, within the roundings shown, the difference or ratio of
two other figures of its section. The file must be one that the figure's paragraph or table row names
(its file name, or a link to it), else one its section (text between headings) names; a section that
quotes a figure and names no result file fails.

The match is by value, not by key: in a large file (explain_sanity*.json holds thousands of numbers
between 0 and 1) a wrong figure can still equal some other stored number.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

# Settings and limits the pages state, not measurements: page -> phrases around the numbers. Each phrase
# must be on its page, so this list cannot outlive the text it excuses.
NOT_MEASURED: dict[str, list[str]] = {
    "docs/benchmarks/busy-machine.md": ["every 0.5 s"],
    "docs/benchmarks/index.md": ["95% bootstrap interval", "seed 1's 95% interval"],  # the intervals' level
    "docs/benchmarks/experiments.md": ["the tutorial's 0.01"],
    "docs/benchmarks/unknown.md": ["at 1% of the fitting half"],  # the setting, not a result
    "docs/howto/budget.md": ["within about 10% of the budget",  # a promise, which tests/test_budget.py checks
                             "random erasing at 96.20%", "random erasing at 95.98%",  # published, not ours
                             "target 92.0%", "target 94.5%", "toward 96.3%"],  # issue 24's targets
    "docs/howto/experiments.md": ["about 3.4e38"],  # float32's largest number, an option's limit
    "docs/howto/explain.md": ["within 7%"],  # the test's tolerance
    "docs/howto/export.md": ["within 1e-4"],
    "docs/howto/models.md": [  # the architectures' sizes and the recipes
        "| 542,230 |", "SGD 0.01, momentum 0.9", "| 141,418 |", "| 696,042 |", "SGD-Nesterov 0.1", "(20% warm-up)",
        "(2% warm-up)", "weight decay 5e-4, label smoothing 0.1", "EMA 0.999"],
    "docs/howto/own-data.md": ["L = 0.299 R + 0.587 G + 0.114 B", "over 20 MB", "below 0.2", "gets 20% on average",
                               "lr 0.1", "more than 1% of images"],
    "docs/howto/predict.md": ["within 8% of their size", "fainter than 40%", "or 20 MB"],
    "docs/howto/serve.md": ["64 MB per request", "20 MB per file", "within 10 s"],
    "docs/howto/torchrun.md": ["distance of 1e-5", "tolerance 1e-2", "within 1e-5"],
    "docs/howto/unknown.md": ["which 1% of the fitting images", "threshold is at 1%"],
}

UNITS = {  # unit -> factors a stored number may be multiplied by to give the figure
    "%": (1, 100), "points": (1, 100), "x": (1,), "s": (1, 1e-3, 60), "CPU seconds": (1,), "ms": (1, 1e3),
    "min": (1, 1 / 60), "minutes": (1, 1 / 60), "CPU minutes": (1, 1 / 60), "hours": (1, 1 / 3600),
    "MB": (1, 1e-6, 2**-20), "MiB": (1, 2**-20), "GB": (1, 1e-9, 2**-30), "GFLOP/s": (1,), "GFLOP": (1, 1e-9),
    "MFLOP": (1, 1e-6), "/s": (1,), "images/s": (1,), "requests/s": (1,), "": (1, 100),
}
ARITHMETIC = {"points", "x"}  # units a difference or a ratio of two of the section's figures may show
ROUGH = 0.005  # operands rounded by more than this share of their value (0.23) would excuse almost any result
NUMBER = r"[-+−]?\d[\d,]*(?:\.\d+)?(?:e[-+−]?\d+)?"
UNIT = "|".join(re.escape(u) + (r"\b" if u[-1].isalpha() else "") for u in sorted(UNITS, key=len, reverse=True)
                if u != "x" and u) + r"|x(?![\dx])"
# A number not glued to a word, a name or a version (nothing of \w . / - # right before it, no letter or
# '.digit' right after), with a second end if it is a range (2.9-4.1 s) and its unit.
FIGURE = re.compile(rf"(?<![\w./\-–#])({NUMBER})(?:(?:-|–|\s+to\s+)({NUMBER}))?(?:\s+({UNIT})|({UNIT}))?(?![\w.]\d|\w)")
PURE_NUMBER_CELL = re.compile(rf"\s*\**{NUMBER}\**\s*")
SMALL_FILE = 2000  # numbers: files this small also offer the mean of two runs (one number from each of two)


@dataclass(frozen=True)
class Figure:
    page: str
    line: int
    text: str
    value: float
    decimals: int  # the precision shown: 2 for 91.04, -3 for 162,000
    unit: str
    signed: bool
    files: tuple[str, ...]  # the result files its section names
    operands: tuple[tuple[float, float], ...] = ()  # the section's other figures: (value, half a unit shown)

    @property
    def half_unit(self) -> float:
        """Half of the last digit shown: how far the figure may lie from what it rounds."""
        return 0.5 * 10.0 ** -self.decimals * (1 + 1e-9) + 1e-12

    def __str__(self) -> str:
        return f"{self.page}:{self.line}: {self.text!r}"


def strip_markup(text: str) -> str:
    """text without inline code, HTML comments and link targets (each replaced by a space)."""
    text = re.sub(r"`[^`]*`", " ", text)
    text = re.sub(r"<!--.*?-->", " ", text, flags=re.S)
    return re.sub(r"\]\([^)]*\)", "] ", text)


def to_float(text: str) -> float:
    return float(text.replace(",", "").replace("−", "-"))


def precision(text: str) -> int:
    """Decimal places shown; negative for an integer's trailing zeros (162,000: -3, a rounding)."""
    mantissa, _, exponent = text.lower().replace(",", "").partition("e")
    places = len(mantissa.partition(".")[2])
    if not exponent and "." not in mantissa:
        places = -(len(mantissa) - len(mantissa.rstrip("0"))) if mantissa.strip("+-−0") else 0
    return places - int(exponent.replace("−", "-")) if exponent else places


def figures_in(text: str, in_cell: bool) -> list[tuple[str, float, int, str, bool, int]]:
    """(text, value, precision, unit, signed, offset) for each figure in a paragraph or a table cell."""
    if in_cell and PURE_NUMBER_CELL.fullmatch(text):  # a cell that is just a number
        number = text.strip().strip("*")
        return [(number, abs(to_float(number)), precision(number), "", number[0] in "+-−", 0)]
    found = []
    for m in FIGURE.finditer(text):
        unit = m.group(3) or m.group(4) or ""
        for end in filter(None, (m.group(1), m.group(2))):
            if unit or "." in end or "e" in end:
                found.append((m.group(0), abs(to_float(end)), precision(end), unit, end[0] in "+-−", m.start()))
    return found


def result_files_named(text: str) -> set[str]:
    return {name for name in re.findall(r"[\w.-]+\.(?:json|csv|md)", text) if (RESULTS / name).is_file()}


def blocks(page: Path) -> list[list[tuple[int, str]]]:
    """page's sections (split at headings), each a list of (first line number, paragraph or table row),
    fenced code left out."""
    sections: list[list[tuple[int, str]]] = [[]]
    fenced, paragraph = False, None
    for number, line in enumerate(page.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced, paragraph = not fenced, None
        elif fenced:
            continue
        elif line.startswith("#"):
            sections.append([])
            paragraph = None
        elif line.lstrip().startswith("|") or not line.strip():
            sections[-1].append((number, line))
            paragraph = None
        elif paragraph is not None:  # a paragraph's next line: figures and units may span the break
            start, text = sections[-1][paragraph]
            sections[-1][paragraph] = (start, text + "\n" + line)
        else:
            sections[-1].append((number, line))
            paragraph = len(sections[-1]) - 1
    return sections


def page_figures(page: Path) -> list[Figure]:
    """Every figure on page, with the result files its section names."""
    name = page.relative_to(ROOT).as_posix()
    figures = []
    for section in blocks(page):
        found_here = []
        files = tuple(sorted(set().union(*(result_files_named(text) for _, text in section))))
        previous_row = False
        for number, text in section:
            for phrase in NOT_MEASURED.get(name, []):
                text = text.replace(phrase, " " * len(phrase))
            plain = strip_markup(text)
            is_row = plain.lstrip().startswith("|")
            header, previous_row = is_row and not previous_row, is_row
            if header or re.fullmatch(r"[\s|:-]*", plain):
                continue  # a table's header row, the line under it, a blank line
            cells = plain.strip().strip("|").split("|")[1:] if is_row else [plain]  # not the row's name
            for cell in cells:
                found_here += [Figure(name, number + cell[:offset].count("\n"), text_, value, places, unit, signed,
                                      tuple(sorted(result_files_named(text))) or files)
                               for text_, value, places, unit, signed, offset in figures_in(cell, is_row)]
        figures += [replace(f, operands=tuple((g.value, g.half_unit) for g in found_here if g is not f and g.value))
                    for f in found_here]
    return figures


def all_figures() -> list[Figure]:
    return [f for page in PAGES for f in page_figures(page)]


def numbers_in(obj) -> list[float]:
    """Every number in a parsed JSON value, those written inside its strings and keys too."""
    if isinstance(obj, bool) or obj is None:
        return []
    if isinstance(obj, (int, float)):
        return [float(obj)]
    if isinstance(obj, str):
        return [to_float(n) for n in re.findall(r"\d+(?:,\d{3})*(?:\.\d+)?(?:e-?\d+)?", obj)]
    if isinstance(obj, dict):
        return numbers_in(list(obj)) + numbers_in(list(obj.values()))
    return [x for item in obj for x in numbers_in(item)]


@cache
def stored(name: str) -> np.ndarray:
    """The numbers in a result file, sorted, without sign."""
    path = RESULTS / name
    values = numbers_in(json.loads(path.read_text()) if path.suffix == ".json" else path.read_text())
    return np.unique(np.abs(np.array(values, dtype=np.float64)))


@cache
def means(first: str, second: str) -> np.ndarray:
    """The means of one number from each of two small result files (two runs of one benchmark)."""
    a, b = stored(first), stored(second)
    if max(len(a), len(b)) > SMALL_FILE:
        return np.array([])
    return np.unique((a[:, None] + b[None, :]) / 2)


def found(figure: Figure, values: np.ndarray) -> bool:
    """Whether some stored number, scaled as the figure's unit allows, rounds to the figure."""
    return any(np.any(np.abs(values * scale - figure.value) <= figure.half_unit) for scale in UNITS[figure.unit])


def derived(figure: Figure) -> bool:
    """Whether a difference (signed, or in points) or a ratio (x) is that of two figures of its section,
    within the roundings shown."""
    if not (figure.unit in ARITHMETIC or figure.signed) or len(figure.operands) < 2:
        return False
    value, half = np.array([(v, h) for v, h in figure.operands if h <= ROUGH * v]).T.reshape(2, -1)
    a, b, ha, hb = value[:, None], value[None, :], half[:, None], half[None, :]
    if figure.unit == "x":
        error, allowed = np.abs(a / b - figure.value), figure.half_unit + ha / b + a * hb / b**2
    else:
        error, allowed = np.abs(a - b - figure.value), figure.half_unit + ha + hb
    np.fill_diagonal(allowed, -1)  # a figure with itself
    return bool(np.any(error <= allowed))


def backed(figure: Figure) -> bool:
    """Whether a file the figure's section names holds it (or, for two files, the mean of two runs), or it
    is arithmetic on the section's other figures."""
    pairs = [(a, b) for a in figure.files for b in figure.files if a < b]
    return (any(found(figure, stored(name)) for name in figure.files)
            or any(found(figure, means(a, b)) for a, b in pairs) or derived(figure))


def test_the_rule_reads_figures_as_documented():
    text = "3.89x faster, 28x28 images, ResNet-14, 91.04% ± 0.32, 2.9-4.1 s, 3.15.1, 1.7e-8, 162,000 images/s, 5 folds"
    assert [f[:4] for f in figures_in(text, in_cell=False)] == [
        ("3.89x", 3.89, 2, "x"), ("91.04%", 91.04, 2, "%"), ("0.32", 0.32, 2, ""), ("2.9-4.1 s", 2.9, 1, "s"),
        ("2.9-4.1 s", 4.1, 1, "s"), ("1.7e-8", 1.7e-8, 9, ""), ("162,000 images/s", 162000, -3, "images/s")]
    assert [f[:4] for f in figures_in(" **1,318** ", in_cell=True)] == [("1,318", 1318, 0, "")]


def test_a_figure_matches_a_stored_number_at_the_precision_shown():
    values = np.array([0.9103666, 1.8234, 7.07, 91.04])
    assert found(Figure("p", 1, "", 91.04, 2, "%", False, ()), values)
    assert found(Figure("p", 1, "", 91.0, 1, "%", False, ()), np.array([0.9103666]))
    assert found(Figure("p", 1, "", 1.82, 2, "s", False, ()), values)
    assert not found(Figure("p", 1, "", 1.83, 2, "s", False, ()), np.array([1.8234]))


def test_a_difference_or_ratio_is_recomputed_from_its_sections_figures():
    shown = ((7.07, 0.005), (1.82, 0.005), (91.18, 0.005), (91.04, 0.005))
    assert derived(Figure("p", 1, "", 3.89, 2, "x", False, (), shown))  # 7.07 / 1.82, roundings allowed
    assert not derived(Figure("p", 1, "", 3.95, 2, "x", False, (), shown))
    assert derived(Figure("p", 1, "", 0.14, 2, "points", False, (), shown))  # 91.18 - 91.04
    assert not derived(Figure("p", 1, "", 0.14, 2, "", False, (), shown))  # not a difference


def test_every_figure_comes_from_a_result_file_its_section_names():
    figures = all_figures()
    assert len(figures) > 500, "the rule finds the pages' figures"
    unnamed = sorted({f"{f.page}:{f.line}" for f in figures if not f.files})
    stale = [f"{f} (not in {', '.join(f.files)})" for f in figures if f.files and not backed(f)]
    assert unnamed == [], "sections that quote figures but name no result file"
    assert stale == []


@pytest.mark.parametrize("page", sorted(NOT_MEASURED))
def test_every_excused_setting_is_on_its_page(page):
    text = (ROOT / page).read_text()
    assert [phrase for phrase in NOT_MEASURED[page] if phrase not in text] == []
