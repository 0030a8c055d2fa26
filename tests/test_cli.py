import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fashion_cnn.app.cli import build_parser, main
from fashion_cnn.config import CVConfig, TrainConfig
from fashion_cnn.jobs import common, crossval, evaluate as evaluate_job
from fashion_cnn.jobs.options import LR_FIND_OPTIONS
from fashion_cnn.training import loop as train


def test_help_lists_commands_options_choices_and_real_defaults():
    out = subprocess.run([sys.executable, "-m", "fashion_cnn", "cv", "--help"],
                         capture_output=True, text=True, check=True).stdout
    for option in ("--folds", "--epochs", "--batch-size", "--lr", "--seed", "--device", "--limit",
                   "--out", "--resume", "--data-dir", "--config", "--early-stopping"):
        assert option in out
    assert "the tutorial's 32" in out
    assert "{sgd,adamw}" in out and "{constant,cosine,onecycle}" in out and "{auto,cpu,cuda}" in out
    words = " ".join(out.split())  # help text wraps anywhere
    assert "default: None" not in words and "(default: the model's recipe: baseline 10, fast 18, strong 50)" in words


def commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


HEAVY = {"torch", "matplotlib", "scipy", "sklearn"}  # seconds of imports, which --help must not wait for


def imported(importtime: str) -> set[str]:
    """The top-level packages that `python -X importtime` reports on stderr."""
    return {line.rpartition("|")[2].strip().partition(".")[0] for line in importtime.splitlines()
            if line.startswith("import time:")}


@pytest.mark.parametrize("argv", [["--help"], ["cv", "--help"]])
def test_help_starts_without_torch_or_matplotlib(argv):
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "fashion_cnn", *argv],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("usage: fashion-cnn"), done.stderr[-2000:]
    assert "fashion_cnn" in imported(done.stderr)  # (the report is read)
    assert not imported(done.stderr) & HEAVY


HELP_OF_EVERY_COMMAND = """
import contextlib, io, sys
from fashion_cnn.app.cli import main
for argv in ([], *([name] for name in sys.argv[1:])):
    with contextlib.redirect_stdout(io.StringIO()) as out:
        try:
            main([*argv, "--help"])
        except SystemExit as e:
            assert e.code == 0, (argv, e.code)
    assert out.getvalue().startswith("usage: fashion-cnn"), argv
print(" ".join(sorted({m.partition(".")[0] for m in sys.modules})))
"""


def test_no_help_loads_torch_or_matplotlib():
    """Every --help is built from modules that load neither (config, models.specs, models.locate,
    jobs.options): it appears at once, not after seconds of imports."""
    done = subprocess.run([sys.executable, "-c", HELP_OF_EVERY_COMMAND, *commands()], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = set(done.stdout.split())
    assert "fashion_cnn" in loaded and not loaded & HEAVY


def test_every_option_of_every_command_says_what_it_does():
    for name, command in commands().items():
        for action in command._actions:
            described = re.sub(r"\(default: (%\(default\)s|[^)]*)\)", "", action.help or "").strip()
            assert described, f"{name} {'/'.join(action.option_strings) or action.dest}: no description"


def test_job_help_groups_its_options_and_ends_with_examples():
    for name, groups in (("cv", ("data", "model and recipe", "validation", "run and output", "resources")),
                         ("sweep", ("data", "model and recipe", "validation", "run and output", "resources")),
                         ("tune", ("data", "model and recipe", "validation", "run and output", "resources",
                                   "search"))):
        text = commands()[name].format_help()
        headings = re.findall(r"^(\S[^:\n]*):$", text, re.M)
        assert headings == ["options", *groups, "examples"], headings
        assert text.startswith(f"usage: fashion-cnn {name} [OPTION ...]\n\n")  # one line, not 20
        examples = text.split("\nexamples:\n")[1].splitlines()
        assert examples and all(line.startswith("  fashion-cnn ") for line in examples)
        assert any(line.startswith(f"  fashion-cnn {name} ") for line in examples)
    cv = commands()["cv"].format_help()
    assert re.search(r"^model and recipe:\n(  .*\n)*  --lr LR ", cv, re.M)
    assert re.search(r"^resources:\n(  .*\n)*  --threads THREADS ", cv, re.M)


def test_abbreviated_options_are_refused(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["cv", "--epoch", "2"])
    assert exit.value.code == 2 and "unrecognized arguments: --epoch" in capsys.readouterr().err


def tiny_args(data_dir: Path, out: Path) -> list[str]:
    """A one-epoch job on the tiny generated IDX data set (conftest.make_dataset_dir)."""
    return ["--data", str(data_dir), "--out", str(out), "--epochs", "1", "--device", "cpu"]


def test_short_cli_run(tiny_data_dir, tmp_path, capsys):
    args = tiny_args(tiny_data_dir, tmp_path / "runs")
    assert main(["cv", "--folds", "2", *args]) == 0
    assert main(["train", *args]) == 0
    cv_dir, train_dir = sorted((tmp_path / "runs").iterdir())
    assert cv_dir.name.endswith("-cv") and train_dir.name.endswith("-train")
    for name in ("learning_curves.png", "fold_accuracies.png"):
        assert (cv_dir / name).stat().st_size > 10_000
    assert len(json.loads((cv_dir / "cv_results.json").read_text())["fold_accuracies"]) == 2
    assert (train_dir / "model.safetensors").is_file()
    err = capsys.readouterr().err
    assert "fold 2/2: accuracy" in err and "accuracy: mean" in err
    assert f"results: {cv_dir / 'cv_results.json'}" in err
    assert "test accuracy: " in err and "%" in err and str(train_dir / "confusion_matrix.png") in err
    assert f"next: fashion-cnn predict IMAGE --model {train_dir}" in err
    assert f"next: fashion-cnn train --epochs 1 --device cpu --data {tiny_data_dir}" in err

    assert main(["evaluate", "--model", str(train_dir), "--data", str(tiny_data_dir),
                 "--out", str(tmp_path / "eval")]) == 0
    out = capsys.readouterr().out
    accuracy = json.loads((train_dir / "metrics.json").read_text())["test_accuracy"]
    assert out.startswith(f"model: {train_dir / 'model.safetensors'}\n")
    assert f"test accuracy: {100 * accuracy:.2f}%" in out and "confusion matrix" in out
    assert f"written: {tmp_path / 'eval' / 'per_class.txt'}" in out


def test_evaluate_reads_the_models_data_set_only_where_it_is_a_known_one(tiny_data_dir, tmp_path, capsys,
                                                                          monkeypatch):
    assert main(["train", *tiny_args(tiny_data_dir, tmp_path / "runs")]) == 0
    [run_dir] = (tmp_path / "runs").iterdir()
    capsys.readouterr()
    model = run_dir / "model.safetensors"
    # the model file names the folder it was trained on: evaluate does not read it on the file's word
    assert main(["evaluate", "--model", str(run_dir)]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == (  # after a warning if the machine is busy
        f"fashion-cnn: error: {model}: trained on {tiny_data_dir}, a folder; a model file does not choose what is "
        "read: pass --data DIR (that folder, if you trust the file)")
    threads = []
    real = evaluate_job.predict_logits
    monkeypatch.setattr(evaluate_job, "predict_logits",
                        lambda *a, **k: threads.append(torch.get_num_threads()) or real(*a, **k))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert main(["evaluate", "--model", str(run_dir), "--data", str(tiny_data_dir), "--threads", "1"]) == 0
        assert threads == [1] and torch.get_num_threads() == 2  # for the command only
    finally:
        torch.set_num_threads(before)
    accuracy = json.loads((run_dir / "metrics.json").read_text())["test_accuracy"]
    assert f"test accuracy: {100 * accuracy:.2f}%" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["evaluate", "--model", str(run_dir), "--threads", "-1"])
    assert "threads must be 0 (one per core) or more" in capsys.readouterr().err


def test_data_command(real_data, tmp_path, capsys):
    assert main(["data", "--data-dir", real_data.source, "--samples", str(tmp_path / "s.png")]) == 0
    out = capsys.readouterr().out
    assert "Ankle boot" in out and "6000" in out and (tmp_path / "s.png").is_file()


# Files that BAD_OPTIONS name by these words, made in the test's folder under that name
FILES = {
    "FILE": lambda p: p.write_text("x"),
    "FIFO": os.mkfifo,
    "LIST.json": lambda p: p.write_text("[1, 2]"),
    "DEEP.json": lambda p: p.write_text('{"lr": ' + "[" * 100_000 + "]" * 100_000 + "}"),
    "DEEP.toml": lambda p: p.write_text("lr = " + "[" * 5000 + "]" * 5000),
    "DECAY.toml": lambda p: p.write_text("weight_decay = 1e300"),
}


def made(arg: str, tmp_path: Path) -> str:
    """arg, or the path of the file it names in FILES, made."""
    if arg not in FILES:
        return arg
    FILES[arg](tmp_path / arg)
    return str(tmp_path / arg)


# Every job option with a value out of its range (or contradicting another): each is refused with one line
# before any run directory exists. Flags that take any value (--flip, --tta, --amp) have no bad value.
BAD_OPTIONS = [
    (["--model", "nope"], "invalid choice: 'nope'"),
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--batch-size", "-1"], "--batch-size must be at least 1"),
    (["--lr", "nan"], "--lr must be a finite number"),
    (["--lr", "inf"], "--lr must be a finite number"),
    (["--lr", "-0.1"], "--lr must be a positive number"),
    (["--lr", "1e39"], "--lr must be a finite number of at most 3.4e+38 in size, got 1e+39"),  # float32 overflows
    (["--lr", "3e38", "--optimizer", "adamw"], "--lr 3e+38 is too large for adamw"),
    (["--config", "DECAY.toml"], "--weight-decay must be a finite number of at most 3.4e+38 in size"),
    (["--momentum", "1.5"], "--momentum must be in [0, 1)"),
    (["--optimizer", "lbfgs"], "invalid choice: 'lbfgs'"),
    (["--nesterov", "--optimizer", "adamw"], "--nesterov needs --optimizer sgd"),
    (["--weight-decay", "-1"], "--weight-decay must be 0 or more"),
    (["--schedule", "linear"], "invalid choice: 'linear'"),
    (["--warmup", "2"], "--warmup must be in [0, 1)"),
    (["--label-smoothing", "5"], "--label-smoothing must be in [0, 1)"),
    (["--crop", "-3"], "--crop must be from 0 to 14"),
    (["--erase", "2"], "--erase must be in [0, 1]"),
    (["--ema", "2"], "--ema must be in [0, 1)"),
    (["--seed", "-1"], "--seed must be 0 or more"),
    (["--device", "tpu"], "invalid choice: 'tpu'"),
    (["--threads", "-2"], "--threads must be from 0 to 1024"),
    (["--threads", "2000"], "--threads must be from 0 to 1024"),
    (["--threads", str(2**63 - 1)], "--threads must be a whole number of at most 2,147,483,647 in size"),
    (["--epochs", str(2**40)], "--epochs must be a whole number of at most 2,147,483,647 in size"),
    (["--limit", "0"], "--limit must be at least 1"),
    (["--limit", "-5"], "--limit must be at least 1"),
    (["--data-dir", "/nonexistent"], "lacks train-images"),
    (["--data", "/nonexistent"], "unknown data set (no such folder) '/nonexistent'"),
    (["--classes", "a,b", "--data", "fashion-mnist"], "--classes is for IDX files and image folders"),
    (["--data", "/", "--data-dir", "/tmp"], "give either --data-dir or --data PATH"),
    (["--test-fraction", "1.5"], "--test-fraction must be between 0 and 1"),
    (["--add-to", "mnist"], "invalid choice: 'mnist'"),
    (["--add-to", "fashion-mnist", "--data", "fashion-mnist"], "--add-to fashion-mnist adds images of your own"),
    (["--framed"], "--framed is for folders of images"),
    (["--class-weights", "balanced"], "invalid choice: 'balanced'"),
    (["--init", "/nonexistent.safetensors"], "--init /nonexistent.safetensors: no such file"),
    (["--init", "FILE"], "not a readable safetensors file"),
    (["--init", "FIFO"], "FIFO: not a regular file (a FIFO, device or socket)"),
    (["--freeze-backbone"], "--freeze-backbone trains the head of an --init model: give --init too"),
    (["--head-warmup", "0.2"], "--head-warmup is for fine-tuning an --init model: give --init too"),
    (["--backbone-lr", "2"], "--backbone-lr must be in (0, 1], got 2"),
    (["--out", "FILE"], "a file, not a folder"),
    (["--eval-batch-size", "0"], "--eval-batch-size must be at least 1"),
    (["--val-size", "-1"], "--val-size must be 0 or more"),
    (["--early-stopping", "-1"], "--early-stopping must be 0 or more"),
    (["--budget", "5"], "--budget must be a duration such as 90s, 5m, 1h or 1h30m, got '5'"),
    (["--config", "/nonexistent.toml"], "no such file"),
    (["--config", "LIST.json"], "LIST.json: not a table of options"),
    (["--config", "DEEP.json"], "DEEP.json: not valid JSON (nested too deeply)"),
    (["--config", "DEEP.toml"], "DEEP.toml: not valid TOML (nested too deeply)"),
    (["--resume", "FILE"], "FILE: not a run directory (a file, not a folder)"),
]
TRAIN_ONLY = [
    (["--early-stopping", "2"], "--early-stopping watches the validation loss: give --val-size"),
]
CV_ONLY = [
    (["--folds", "0"], "--folds must be at least 1"),
    (["--split-seed", "-1"], "--split-seed must be 0 or more"),
    (["--val-size", "50"], "--val-size makes one validation split, so it goes with --folds 1"),
    (["--folds", "1"], "--folds 1 needs --val-size"),
    (["--folds", "1", "--val-size", "50", "--split-seed", "3"], "--split-seed shuffles the k folds"),
]


# Out of range for the data: checked after it is loaded, still before the run directory exists
BAD_FOR_THE_DATA = [
    ("train", ["--val-size", "5000", "--limit", "100"], "--val-size must be between"),
    ("cv", ["--folds", "500", "--limit", "100"], "--folds must be between 2 and the number of images"),
]


def refused(job: str, argv: list[str], message: str, data_dir: str, tmp_path: Path, capsys) -> None:
    argv = [made(a, tmp_path) for a in argv]
    out = tmp_path / "runs"
    defaults = {"--data": data_dir, "--out": str(out)} if "--data-dir" not in argv else {"--out": str(out)}
    for flag, value in defaults.items():
        if flag not in argv:
            argv += [flag, value]
    try:
        status = main([job, *argv])
    except SystemExit as e:  # argparse's own checks: choices and types
        status = e.code
    assert status in (1, 2)
    err = capsys.readouterr().err.strip().splitlines()
    assert "error:" in err[-1] and message in err[-1], err[-1]
    assert "Traceback" not in "\n".join(err)
    assert not out.exists() or not any(out.iterdir())  # no orphan run directory


@pytest.mark.parametrize("job, argv, message", [("train", a, m) for a, m in BAD_OPTIONS + TRAIN_ONLY]
                         + [("cv", a, m) for a, m in BAD_OPTIONS + CV_ONLY])
def test_bad_options_are_one_line_errors_that_leave_nothing_behind(job, argv, message, tmp_path, tiny_data_dir,
                                                                   capsys):
    refused(job, argv, message, str(tiny_data_dir), tmp_path, capsys)  # all refused before the data is read


@pytest.mark.parametrize("job, argv, message", BAD_FOR_THE_DATA)
def test_options_out_of_range_for_the_data_are_refused_before_the_run_starts(job, argv, message, tmp_path,
                                                                             tiny_data_dir, capsys):
    refused(job, argv, message, str(tiny_data_dir), tmp_path, capsys)


def test_every_job_option_is_tested_with_a_bad_value():
    tested = {a[0] for a, _ in BAD_OPTIONS + TRAIN_ONLY + CV_ONLY} | {a[0] for _, a, _ in BAD_FOR_THE_DATA}
    anything_goes = {"--flip", "--tta", "--amp", "--tensorboard"}  # flags: both values are valid
    # (--tensorboard without its package: tests/test_tensorboard_log.py)
    options = {"--" + f.name.replace("_", "-") for f in dataclasses.fields(CVConfig)} | {"--config", "--resume"}
    assert options - anything_goes <= tested, options - anything_goes - tested


@pytest.fixture
def reads(monkeypatch):
    """The config fields that job code reads, as opposed to the config's own validation, copying and
    printing: an option that no job code reads would be an option that does nothing."""
    seen = set()
    internal = {getattr(cls, name).__code__ for cls in (TrainConfig, CVConfig) for name in vars(cls)
                if callable(getattr(cls, name)) and hasattr(getattr(cls, name), "__code__")}
    internal |= {TrainConfig.from_dict.__func__.__code__, crossval.train_command.__code__,
                 common.resumed_config.__code__}
    names = {f.name for f in dataclasses.fields(CVConfig)}

    def tracking(self, name):
        caller = sys._getframe(1).f_code
        if name in names and caller not in internal and not caller.co_filename.endswith(("dataclasses.py", "<string>")):
            seen.add(name)
        return object.__getattribute__(self, name)

    monkeypatch.setattr(TrainConfig, "__getattribute__", tracking)
    return seen


def test_every_job_option_acts(reads, tiny_data_dir, tmp_path):
    """Each option of `cv` and `train` is read by the job itself (fields a job cannot use, like `cv
    --val-size` with several folds, are refused instead: test_bad_options_...)."""
    common = tiny_args(tiny_data_dir, tmp_path)
    assert main(["cv", "--folds", "2", *common]) == 0
    cv_reads = set(reads)
    assert main(["cv", "--folds", "1", "--val-size", "50", *common]) == 0
    assert main(["train", "--val-size", "50", "--early-stopping", "1", "--tensorboard", *common]) == 0
    [trained] = tmp_path.glob("*-train")
    assert main(["train", "--init", str(trained), "--freeze-backbone", "--class-weights", "auto", *common]) == 0
    fields = {f.name for f in dataclasses.fields(CVConfig)}
    assert reads == fields, fields - reads
    assert {"folds", "split_seed"} <= cv_reads


def job_flags_of(names) -> set[str]:
    """The command-line flags of config fields: --name, and --no-name for the booleans."""
    flags = {"--" + n.replace("_", "-") for n in names}
    return flags | {"--no-" + n.replace("_", "-") for n in names if CVConfig.__dataclass_fields__.get(n)
                    and CVConfig.__dataclass_fields__[n].type.startswith("bool")}


# Options of the other commands, each with a check that it reached the code that acts on it
def test_every_option_of_every_command_is_covered():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    job_flags = {f"--{prefix}{f.name.replace('_', '-')}" for f in dataclasses.fields(CVConfig) for prefix in ("", "no-")}
    # sweep and tune pass the job options on to cross_validate, whose tests cover them
    options = {(name, opt) for name, p in sub.choices.items() for a in p._actions for opt in a.option_strings
               if opt.startswith("--") and opt != "--help" and name not in ("cv", "train")
               and not (name in ("sweep", "tune") and opt in job_flags)}
    data_options = {"--data", "--classes", "--test-fraction", "--data-dir", "--add-to", "--framed", "--no-framed"}
    covered = {("data", "--samples"), ("data", "--force"), ("evaluate", "--model"), ("evaluate", "--out"),
               ("evaluate", "--threads"),
               *(("data", o) for o in data_options), *(("evaluate", o) for o in data_options),
               ("predict", "--model"), ("predict", "--top-k"), ("predict", "--json"), ("predict", "--csv"),
               ("predict", "--no-invert"), ("predict", "--no-crop"), ("predict", "--framed"),
               ("predict", "--save-preprocessed"),
               ("serve", "--model"), ("serve", "--host"), ("serve", "--port"), ("serve", "--allowed-host"),
               ("export", "--model"),
               ("export", "--force"), ("calibrate", "--model"), ("calibrate", "--force"),
               ("calibrate", "--fit-on-test-images"),
               ("predict", "--min-confidence"), ("serve", "--min-confidence"),
               *(("calibrate", o) for o in data_options),
               *(("explain", o) for o in ("--model", "--top-k", "--no-invert", "--no-crop", "--framed", "--out",
                                          "--force", "--json")),
               ("report", "--out"), ("report", "--data-dir"), ("report", "--force"), ("evaluate", "--force"),
               ("predict", "--force"),
               ("sweep", "--config"), ("sweep", "--resume"), *(("tune", o) for o in (
                   "--config", "--resume", "--space", "--trials", "--timeout", "--storage", "--study")),
               *(("lr-find", o) for o in job_flags_of(LR_FIND_OPTIONS))}
    # data and evaluate: test_short_cli_run, test_data_command, test_data_samples_is_checked_..., and in tests/test_datasets.py
    # test_data_command_on_a_folder and test_data_and_evaluate_take_the_jobs_data_options, --add-to in
    # tests/test_own_data.py test_add_to_fashion_mnist; evaluate --force: tests/test_report.py;
    # predict: tests/test_predict.py;
    # export: tests/test_export.py; explain: tests/test_explain.py; report: tests/test_report.py;
    # calibrate: tests/test_calibration.py (its data options are read as evaluate's, by load_job_data);
    # serve: test_serve_passes_its_options_on below (--allowed-host acting: tests/test_serve.py); sweep: tests/test_sweep.py;
    # tune: tests/test_tune.py; lr-find: tests/test_lrfind.py (test_every_range_test_option_acts and its range)
    assert options <= covered, options - covered


def test_serve_passes_its_options_on(monkeypatch, tmp_path):
    from fashion_cnn.app import serve

    called = {}
    monkeypatch.setattr(serve, "run", lambda model, host, port, min_confidence, allowed_hosts: called.update(
        model=model, host=host, port=port, min_confidence=min_confidence, allowed_hosts=allowed_hosts))
    assert main(["serve", "--model", "m.safetensors", "--host", "0.0.0.0", "--port", "8123",
                 "--min-confidence", "0.4", "--allowed-host", "a.lan", "--allowed-host", "b.lan"]) == 0
    assert called == {"model": "m.safetensors", "host": "0.0.0.0", "port": 8123, "min_confidence": 0.4,
                      "allowed_hosts": ["a.lan", "b.lan"]}
    with pytest.raises(SystemExit):
        main(["serve", "--port", "70000"])


def test_config_files_toml_and_a_runs_own_config_json(tiny_data_dir, tmp_path, capsys):
    toml = tmp_path / "recipe.toml"
    toml.write_text(f'epochs = 1\nlr = 0.02\nlimit = 120\ndata = "{tiny_data_dir}"\nout = "{tmp_path / "a"}"\n')
    assert main(["train", "--config", str(toml), "--lr", "0.03"]) == 0  # the command line wins
    [first] = (tmp_path / "a").iterdir()
    saved = json.loads((first / "config.json").read_text())
    assert (saved["epochs"], saved["lr"], saved["limit"]) == (1, 0.03, 120)
    # the saved config.json is itself a valid --config
    assert main(["train", "--config", str(first / "config.json"), "--out", str(tmp_path / "b")]) == 0
    [second] = (tmp_path / "b").iterdir()
    again = json.loads((second / "config.json").read_text())
    assert {**again, "out": None} == {**saved, "out": None}
    for text, message in (("epochs = 'ten'", "epochs must be a whole number"), ("epochs = [", "not valid TOML"),
                          ("folds = 3", "folds: not options of this job")):
        toml.write_text(text)
        assert main(["train", "--config", str(toml), "--out", str(tmp_path / "c")]) == 1
        assert message in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_resume_keeps_the_saved_options_and_says_what_it_does_with_new_ones(tiny_data_dir, tmp_path, capsys):
    args = tiny_args(tiny_data_dir, tmp_path / "runs")
    assert main(["train", *args]) == 0
    [run] = (tmp_path / "runs").iterdir()
    assert main(["train", "--resume", str(run), "--lr", "0.5"]) == 1
    assert "--lr 0.01 -> 0.5" in capsys.readouterr().err
    assert main(["cv", "--resume", str(run)]) == 1
    assert "a 'train' run, not a 'cv' run" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 0  # a constant learning rate: may grow
    assert "continuing to 2 epochs" in capsys.readouterr().err
    assert len(json.loads((run / "metrics.json").read_text())["history"]) == 2
    assert json.loads((run / "config.json").read_text())["epochs"] == 2


def test_interruption_names_the_run_to_resume(tiny_data_dir, tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train.TrainState, "save", interrupted)
    assert main(["train", *tiny_args(tiny_data_dir, tmp_path / "runs")]) == 130
    [run] = (tmp_path / "runs").iterdir()
    assert f"`fashion-cnn train --resume {run}` continues" in capsys.readouterr().err


def test_a_diverged_run_stops_with_a_clear_error_and_saves_no_model(tiny_data_dir, tmp_path, capsys):
    assert main(["train", *tiny_args(tiny_data_dir, tmp_path / "runs"), "--lr", "1e30"]) == 1
    assert "training diverged in epoch 1" in capsys.readouterr().err
    [run] = (tmp_path / "runs").iterdir()
    assert not (run / "model.safetensors").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="refused only where there is no GPU")
@pytest.mark.parametrize("argv", [["train"], ["cv"], ["sweep", "--lr", "0.01", "0.1"], ["tune"], ["lr-find"],
                                  ["train", "--budget", "1m"]])
def test_device_cuda_without_a_gpu_is_refused_before_any_work(argv, tiny_data_dir, tmp_path, capsys):
    out = tmp_path / "runs"
    assert main([*argv, "--device", "cuda", "--data-dir", str(tiny_data_dir), "--out", str(out)]) == 1
    assert capsys.readouterr().err == "fashion-cnn: error: --device cuda: no CUDA device is available\n"
    assert not out.exists()


def test_python_dash_m_runs_the_cli():
    out = subprocess.run([sys.executable, "-m", "fashion_cnn", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("fashion-cnn ")


def unwritable_outputs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Places no output can go, with (part of) the one-line error each must get."""
    (tmp_path / "notes.txt").write_text("a file")
    (tmp_path / "folder").mkdir()
    cases = {"a file's child": (tmp_path / "notes.txt" / "out", f"{tmp_path / 'notes.txt'}: a file, not a folder")}
    if Path("/proc/self").is_dir():  # read-only even for root
        cases["read-only"] = (Path("/proc/fashion-cnn-out"), "/proc: cannot write here")
    return cases


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_output_folders_that_cannot_be_written_are_one_line_errors_before_any_work(command, tmp_path, capsys):
    cases = unwritable_outputs(tmp_path)
    cases["a file"] = (tmp_path / "notes.txt", f"{tmp_path / 'notes.txt'}: a file, not a folder")
    for out, reason in cases.values():
        # Neither the model nor the data exist: the output is checked before either is looked for.
        argv = (["evaluate", "--model", "/nonexistent", "--data-dir", "/nonexistent", "--out", str(out)]
                if command == "evaluate" else
                ["predict", "/nonexistent.png", "--model", "/nonexistent", "--save-preprocessed", str(out)])
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("fashion-cnn: error: ") and err.count("\n") == 1 and reason in err, err


def test_data_samples_is_checked_before_the_data_is_loaded(tmp_path, capsys):
    cases = unwritable_outputs(tmp_path)
    (tmp_path / "old.png").write_bytes(b"keep me")
    cases["a folder"] = (tmp_path / "folder", "a folder; name a file")
    cases["existing"] = (tmp_path / "old.png", "already exists; --force replaces it")
    for out, reason in cases.values():
        assert main(["data", "--data-dir", "/nonexistent", "--samples", str(out)]) == 1
        err = capsys.readouterr().err
        assert err.startswith("fashion-cnn: error: ") and err.count("\n") == 1 and reason in err, err
    assert main(["data", "--data-dir", "/nonexistent", "--samples", str(tmp_path / "old.png"), "--force"]) == 1
    assert "lacks train-images" in capsys.readouterr().err  # --force: on to the data, which is missing
    assert (tmp_path / "old.png").read_bytes() == b"keep me"
