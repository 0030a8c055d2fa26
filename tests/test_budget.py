import json
import time

import pytest
from conftest import make_dataset_dir

from fashion_cnn.app.cli import main
from fashion_cnn.jobs import budget
from fashion_cnn.jobs.budget import Cost, Frontier, choose, load_frontier


def point(recipe: str, epochs: int, accuracy: float, minutes: float, val: float | None = None) -> dict:
    """A frontier point as benchmarks/frontier.py writes it."""
    return {"recipe": recipe, "epochs": epochs, "seeds": 3, "wall_minutes": {"mean": minutes, "std": 0.01},
            "cpu_minutes": {"mean": 2 * minutes, "std": 0.02}, "test_accuracy": {"mean": accuracy, "std": 0.002},
            "val_accuracy": None if val is None else {"mean": val, "std": 0.002}}


POINTS = [point("baseline", 1, 0.85, 0.05), point("baseline", 10, 0.9075, 0.5),
          point("fast", 2, 0.88, 0.5), point("fast", 18, 0.9387, 4.1)]


@pytest.fixture
def frontier_file(tmp_path, monkeypatch):
    """A measured frontier in which the baseline scales down to one epoch and the fast model to two."""
    path = tmp_path / "frontier.json"
    path.write_text(json.dumps({"run": {"finished": "2026-12-07T12:00:00+00:00"}, "machine": "a test machine",
                                "points": POINTS}))
    monkeypatch.setattr(budget, "FRONTIER_FILE", path)
    return path


def test_the_choice_scales_epochs_down_and_takes_the_best_recipe_that_fits():
    frontier = Frontier(tuple(POINTS), "test", measured=True)
    costs = {"baseline": Cost(epoch=3, once=5), "fast": Cost(epoch=20, once=8)}
    tiny = choose(frontier, costs, 20)
    assert (tiny.recipe, tiny.epochs) == ("baseline", 5)  # (20 - 5) // 3; fast's fewest, 2, need 48 s
    assert tiny.expected == pytest.approx(0.85 + (0.9075 - 0.85) * 4 / 9)  # between the measured 1 and 10
    larger = choose(frontier, costs, 300)
    assert (larger.recipe, larger.epochs) == ("fast", 14) and larger.seconds == 8 + 14 * 20
    assert choose(frontier, costs, 3600).epochs == 18  # never past what the frontier measured
    assert choose(frontier, costs, 7) is None  # not even one baseline epoch


def test_the_choice_ranks_by_validation_accuracy_where_the_frontier_has_it():
    points = [point("baseline", 10, 0.91, 0.5, val=0.95), point("fast", 18, 0.94, 4.1, val=0.93)]
    choice = choose(Frontier(tuple(points), "test", measured=True), {"baseline": Cost(1, 1), "fast": Cost(1, 1)}, 100)
    assert choice.recipe == "baseline" and choice.expected == 0.91  # the test set only reports


def test_points_measured_on_several_machines_pool_their_seeds_and_name_their_machine(tmp_path, capsys):
    """benchmarks/frontier.py keeps each CPU's points: accuracy is pooled, time is this machine's to measure."""
    xeon, epyc = point("fast", 18, 0.94, 4.1), {**point("fast", 18, 0.93, 6.4), "seeds": 1}
    points = [{**p, "machine": m} for p, m in ((point("fast", 2, 0.88, 0.5), "Xeon, 2 threads"),
                                               (xeon, "Xeon, 2 threads"), (epyc, "EPYC, 2 threads"))]
    frontier = Frontier(tuple(points), "test", measured=True)
    assert frontier.epochs("fast") == [2, 18]
    assert frontier.expected("fast", 18) == pytest.approx((3 * 0.94 + 0.93) / 4)  # over all 4 seeds
    assert frontier.expected("fast", 10) == pytest.approx(0.88 + ((3 * 0.94 + 0.93) / 4 - 0.88) / 2)
    path = tmp_path / "frontier.json"
    path.write_text(json.dumps({"run": {"finished": "2026-12-07"}, "machines": ["EPYC, 2 threads", "Xeon, 2 threads"],
                                "points": points}))
    lines = budget.frontier_lines(load_frontier(path))
    assert lines[0].startswith("frontier: measured by benchmarks/frontier.py on EPYC, 2 threads and Xeon, 2 threads")
    assert lines[1].endswith("seeds  machine") and lines[-1].endswith("1  EPYC, 2 threads")


def budget_run(tmp_path, *argv: str) -> list[str]:
    data = make_dataset_dir(tmp_path / "data", n_train=2000, n_test=500)
    return ["--data", str(data), "--out", str(tmp_path / "runs"), "--threads", "1", "--device", "cpu", *argv]


def test_train_with_a_budget_finishes_in_it_and_records_its_choice(frontier_file, tmp_path, capsys):
    argv = budget_run(tmp_path, "--budget", "20s", "--limit", "2000")
    start = time.perf_counter()
    assert main(["train", *argv]) == 0
    elapsed = time.perf_counter() - start
    assert elapsed < 20 * (1 + budget.SLACK) + 3, elapsed  # 3 s: the data set's first read, torch's first steps
    [run_dir] = (tmp_path / "runs").iterdir()
    config = json.loads((run_dir / "config.json").read_text())
    err = capsys.readouterr().err
    line = next(line for line in err.splitlines() if line.startswith("budget 20s: "))
    assert f"recipe {config['model']}, {config['epochs']} epochs (of " in line, line
    assert config["budget"] == "20s" and "on this machine (measured" in line


def test_cv_divides_the_budget_over_its_folds(frontier_file, tmp_path, capsys):
    assert main(["cv", *budget_run(tmp_path, "--budget", "20s", "--limit", "500", "--model", "baseline",
                                   "--folds", "2")]) == 0
    err = capsys.readouterr().err
    assert "budget 20s over 2 folds: recipe baseline, " in err and " per fold (of 10)" in err
    assert "; the 20s budget was divided over the 2 folds" in err


@pytest.mark.parametrize("job", ["train", "cv"])
def test_a_budget_too_short_for_any_recipe_is_refused_before_any_run(job, frontier_file, tmp_path, capsys):
    assert main([job, *budget_run(tmp_path, "--budget", "1s")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--budget 1s is too short for any recipe on this machine: the quickest, baseline " \
                               "at 1 epoch, needs about" in err[0], err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "3"], "--budget chooses the epochs: leave out --epochs"),
    (["--model", "strong"], "--budget: the frontier has no points for model 'strong'"),
])
def test_what_a_budget_decides_is_not_given_beside_it(argv, message, frontier_file, tmp_path, capsys):
    assert main(["train", *budget_run(tmp_path, "--budget", "5m", *argv)]) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_models_shows_the_frontier_and_where_it_comes_from(frontier_file, capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert f"frontier: measured by benchmarks/frontier.py on a test machine, 2026-12-07 ({frontier_file})" in out
    rows = [line.split() for line in out.splitlines() if line.startswith(("baseline ", "fast "))]
    assert ["fast", "18", "4.10", "±", "0.01", "8.20", "±", "0.02", "93.87%", "±", "0.20", "3"] in rows


def test_without_a_measured_frontier_the_published_runs_stand_in(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(budget, "FRONTIER_FILE", tmp_path / "none.json")
    frontier = load_frontier()
    assert not frontier.measured and [frontier.epochs(r) for r in ("baseline", "fast", "strong")] == [[10], [18], [50]]
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "frontier: no measured frontier yet" in out and "the recipe's single measured run" in out
    assert ["fast", "18", "4.12", "8.21", "93.87%", "1"] in [line.split() for line in out.splitlines()]


def test_a_damaged_frontier_file_is_a_one_line_error(frontier_file, capsys):
    frontier_file.write_text('{"points": [{"recipe": "fast"}]}')
    assert main(["models"]) == 1
    assert f"{frontier_file}: not a frontier file" in capsys.readouterr().err
