import csv
import json

import pytest
from conftest import run_killed_at

from fashion_cnn.app.cli import build_parser, main
from fashion_cnn.jobs import sweep as sweep_module
from fashion_cnn.jobs.sweep import grid_points, metric_against_value, split_grid, sweep, sweep_curves
from fashion_cnn.training import loop as train


def test_a_grid_of_several_options_in_help_order_each_point_checked():
    points = grid_points({"lr": [0.01, 0.1], "batch_size": [16, 32], "epochs": 3, "folds": [2]})
    assert [p.values for p in points] == [{"batch_size": 16, "lr": 0.01}, {"batch_size": 16, "lr": 0.1},
                                          {"batch_size": 32, "lr": 0.01}, {"batch_size": 32, "lr": 0.1}]
    assert all(p.cfg.epochs == 3 and p.cfg.folds == 2 for p in points)
    assert points[1].folder == "02-batch_size=16,lr=0.1" and points[1].label == "batch_size=16, lr=0.1"
    # a model's recipe is filled in per point, not from the first model
    fast, baseline = grid_points({"model": ["fast", "baseline"]})
    assert (fast.cfg.batch_size, baseline.cfg.batch_size) == (128, 32)
    for values, message in (({"lr": [0.1, 0.1]}, "a value is repeated"), ({"lr": 0.1}, "at least one option"),
                            ({"lr": [0.1, -1.0]}, "lr=-1: --lr must be a positive number"),
                            ({"out": ["a", "b"]}, "--out takes one folder"), ({"folds": [2, 3], "nope": [1, 2]},
                                                                              "nope: not options of cv")):
        with pytest.raises(ValueError, match=message):
            grid_points(values)


def test_every_option_takes_several_values_flags_too():
    parse = build_parser().parse_args
    args = parse(["sweep", "--lr", "0.1", "0.01", "--flip", "true", "false", "--tta", "--no-amp", "--model", "fast"])
    assert (args.lr, args.flip, args.tta, args.amp, args.model) == ([0.1, 0.01], [True, False], [True], [False], ["fast"])
    assert split_grid(vars(args) | {"func": None})[1] == {"lr": [0.1, 0.01], "flip": [True, False]}
    with pytest.raises(SystemExit):
        parse(["sweep", "--flip", "maybe"])


def test_sweep_writes_points_table_and_plots(tiny_data_dir, tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["sweep", "--lr", "0.003", "0.03", "--folds", "1", "--val-size", "50", "--epochs", "2",
                 "--data", str(tiny_data_dir), "--out", str(out), "--device", "cpu"]) == 0
    [run] = out.iterdir()
    assert run.name.endswith("-sweep")
    config = json.loads((run / "config.json").read_text())
    assert config["lr"] == [0.003, 0.03] and config["val_size"] == 50
    with open(run / "sweep_results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["lr"]) for r in rows] == [0.003, 0.03]
    for row in rows:  # every point is an ordinary cv run inside the sweep's directory, and the table is its result
        point = run / row["run_dir"]
        assert json.loads((point / "config.json").read_text())["lr"] == float(row["lr"])
        assert float(row["val_accuracy"]) == json.loads((point / "cv_results.json").read_text())["mean"]
    for plot in ("sweep_curves.png", "sweep_metric.png"):
        assert (run / plot).stat().st_size > 10_000
    err = capsys.readouterr().err
    assert "val accuracy (%)" in err and "±" in err and f"results: {run / 'sweep_results.csv'}" in err
    best = max(rows, key=lambda r: (float(r["val_accuracy"]), -float(r["val_loss"])))
    assert f"next: fashion-cnn train --epochs 2 --lr {float(best['lr']):g} --device cpu" in err
    # the sweep's config.json is itself a --config: the same sweep again
    assert main(["sweep", "--config", str(run / "config.json")]) == 0
    again = max(out.iterdir())
    with open(again / "sweep_results.csv") as f:
        assert [r["val_accuracy"] for r in csv.DictReader(f)] == [r["val_accuracy"] for r in rows]


def test_a_killed_sweep_resumes_after_its_last_finished_point(tiny_data_dir, tmp_path, monkeypatch):
    values = {"lr": [0.003, 0.03], "folds": 2, "epochs": 2, "device": "cpu", "data": str(tiny_data_dir),
              "out": str(tmp_path / "runs")}
    reference = sweep(values)
    # point 2, fold 1, epoch 2: killed before its checkpoint
    run_killed_at(monkeypatch, train, "save_checkpoint", 6, lambda: sweep(values))
    run_dir = max((tmp_path / "runs").iterdir())
    [point_run] = (run_dir / "points" / "02-lr=0.03").iterdir()
    assert not (point_run / "cv_results.json").exists()

    calls = []
    real = sweep_module.cross_validate
    monkeypatch.setattr(sweep_module, "cross_validate", lambda *a, **k: calls.append(k) or real(*a, **k))
    resumed = sweep(resume=run_dir)
    assert [c["resume"] for c in calls] == [point_run]  # point 1 skipped; point 2 through cv's resume
    keys = ("val_accuracy", "val_accuracy_std", "val_loss", "best_epoch", "curve")
    assert [{k: p[k] for k in keys} for p in resumed.points] == [{k: p[k] for k in keys} for p in reference.points]
    assert (run_dir / "sweep_metric.png").is_file()
    with pytest.raises(ValueError, match="give --resume alone"):
        sweep({"lr": [1.0, 2.0]}, resume=run_dir)


def records(grid_name: str, values: list, accuracies: list[float]) -> list[dict]:
    curve = {"epoch": [1, 2], "val_accuracy": [0.5, 0.6], "val_accuracy_std": [0.01, 0.01],
             "val_loss": [1.0, 0.9], "val_loss_std": [0.1, 0.1]}
    return [{"values": {grid_name: v}, "val_accuracy": a, "val_accuracy_std": 0.01, "val_loss": 1 - a,
             "val_loss_std": 0.02, "folds": 5, "curve": curve} for v, a in zip(values, accuracies)]


def test_metric_plot_log_axis_for_learning_rates_and_the_best_point_starred():
    points = records("lr", [0.001, 0.01, 0.1], [0.80, 0.91, 0.85])
    fig = metric_against_value(points, {"lr": [0.001, 0.01, 0.1]})
    accuracy = fig.axes[0]
    assert accuracy.get_xscale() == "log"
    star = next(line for line in accuracy.get_lines() if line.get_marker() == "*")
    assert list(star.get_xdata()) == [0.01] and list(star.get_ydata()) == [pytest.approx(91.0)]
    assert any("best: lr=0.01" in t.get_text() for t in accuracy.get_legend().get_texts())
    assert metric_against_value(records("batch_size", [32, 64], [0.9, 0.8]), {"batch_size": [32, 64]}
                                ).axes[0].get_xscale() == "linear"
    # the curves chart: one mean line and one band (the folds' spread) per point
    curves = sweep_curves(points).axes[1]
    assert len(curves.get_lines()) == 3 and len(curves.collections) == 3


@pytest.mark.parametrize("job", ["sweep", "tune"])
def test_a_budget_is_refused_where_no_recipe_is_chosen_for_it(job, tmp_path, capsys):
    grid = ["--lr", "0.01", "0.1"] if job == "sweep" else []
    assert main([job, *grid, "--budget", "5m", "--out", str(tmp_path / "runs")]) == 1
    assert f"--budget is for train and cv, which choose the recipe that fits it; a {job} runs the options" in \
        capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
