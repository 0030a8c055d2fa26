import json
import subprocess
import sys
import threading
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest

from fashion_cnn.jobs import common

optuna = pytest.importorskip("optuna", reason="tune needs the tune extra: pip install 'fashion-cnn[tune]'")

from conftest import run_killed_at  # noqa: E402
from postgres import PostgresServer, PostgresUnavailable  # noqa: E402

from fashion_cnn.app.cli import main
from fashion_cnn.config import CVConfig
from fashion_cnn.jobs import tune as tune_module
from fashion_cnn.jobs.tune import Dimension, parse_dimension, progress_reporter, search_space, tune
from fashion_cnn.training import loop as train

TESTS = Path(__file__).resolve().parent


def test_space_syntax_ranges_log_ranges_choices_and_fixed_values():
    assert parse_dimension("lr", "1e-3:0.1:log") == Dimension("lr", 0.001, 0.1, log=True)
    assert parse_dimension("batch_size", "32:256:log") == Dimension("batch_size", 32, 256, log=True)
    assert parse_dimension("label_smoothing", "0:0.2") == Dimension("label_smoothing", 0.0, 0.2)
    assert parse_dimension("flip", "true,false") == Dimension("flip", choices=(True, False))
    assert parse_dimension("optimizer", "sgd,adamw") == Dimension("optimizer", choices=("sgd", "adamw"))
    assert parse_dimension("epochs", "12") == 12  # fixed
    assert str(parse_dimension("lr", "0.001:0.1:log")) == "0.001:0.1:log"
    for name, text, message in (("out", "a,b", "not a searchable option"), ("lr", "0.1:0.01", "low end must be below"),
                                ("lr", "0:1:log", "log range must be above 0"), ("flip", "0:1", "numeric option"),
                                ("batch_size", "32,6.5", "'6.5' is not a whole number"), ("crop", "1,1", "repeated"),
                                ("lr", "1:2:lin", "LOW:HIGH:log")):
        with pytest.raises(ValueError, match=message):
            parse_dimension(name, text)


def test_the_default_space_less_given_options_with_the_space_laid_over_it():
    options, dims = search_space({"model": "fast", "crop": 2}, {"lr": "0.01:0.2:log", "flip": "true"})
    by_name = {d.name: d for d in dims}
    assert "crop" not in by_name and options["crop"] == 2 and options["flip"] is True  # given: fixed
    assert by_name["lr"] == Dimension("lr", 0.01, 0.2, log=True)
    assert by_name["epochs"] == Dimension("epochs", 9, 18)  # half the fast recipe's 18 epochs to all of them
    assert {"weight_decay", "batch_size", "erase", "label_smoothing"} <= set(by_name)
    for options, space, message in (({"lr": 0.1}, {"lr": "0.01:0.2"}, "also given as --lr"),
                                    ({}, {"crop": "0:20"}, "--crop must be from 0 to 14"),
                                    ({"optimizer": "adamw"}, {"nesterov": "true,false"}, "--nesterov needs")):
        with pytest.raises(ValueError, match=message):
            search_space(options, space)


class FakeTrial:
    def __init__(self, prune_at: int | None = None):
        self.reports, self.prune_at = [], prune_at

    def report(self, value, step):
        self.reports.append((step, value))

    def should_prune(self):
        return self.prune_at is not None and self.reports[-1][0] >= self.prune_at


def rows(*accuracies):
    return [{"val_accuracy": a} for a in accuracies]


def test_trials_report_the_running_estimate_at_every_tenth_of_their_progress():
    cfg = CVConfig(folds=2, epochs=2)
    trial = FakeTrial()
    report = progress_reporter(trial, cfg)
    report({1: rows(0.5)})  # fold 1 of 2, epoch 1 of 2: a quarter done
    report({1: rows(0.5, 0.7)})
    report({1: rows(0.5, 0.7), 2: rows(0.6)})
    assert trial.reports == [(1, 0.5), (2, 0.5), (3, 0.7), (4, 0.7), (5, 0.7), (6, pytest.approx(0.65)),
                             (7, pytest.approx(0.65))]
    resumed = FakeTrial(prune_at=8)
    report = progress_reporter(resumed, cfg, reported=7)  # steps 1-7 were reported before the kill
    with pytest.raises(optuna.TrialPruned, match="pruned at 100%"):
        report({1: rows(0.5, 0.7), 2: rows(0.6, 0.8)})
    assert resumed.reports == [(step, pytest.approx(0.75)) for step in (8, 9, 10)]


def tune_args(data_dir: Path, out: Path, *extra: str, lr: str = "0.003:0.1:log") -> list[str]:
    """A tiny study: one epoch on the generated IDX data, a 50-image validation split, a small space."""
    return ["tune", "--data", str(data_dir), "--out", str(out), "--epochs", "1", "--device", "cpu", "--folds", "1",
            "--val-size", "50", "--space", f"lr={lr}", "batch_size=16,32", "label_smoothing=0",
            "crop=0", "erase=0", "flip=false", "weight_decay=0", *extra]


def test_tune_writes_the_best_config_plots_and_the_command_and_the_config_trains(tiny_data_dir, tmp_path, capsys):
    out = tmp_path / "runs"
    # learning rates too low to learn the tiny data in one epoch: trials differ, and importances exist
    assert main(tune_args(tiny_data_dir, out, "--trials", "3", lr="0.0001:0.003:log")) == 0
    [run] = out.iterdir()
    report = json.loads((run / "tune_results.json").read_text())
    assert report["trials"]["complete"] == 3 and "test set was not used" in report["test_set"]
    study = optuna.load_study(study_name="fashion-cnn", storage=f"sqlite:///{run / 'study.db'}")
    assert report["best"]["number"] == study.best_trial.number and report["best"]["value"] == study.best_value
    assert {t.number for t in study.trials} == {0, 1, 2} and all((run / "trials" / f"{n:04d}").is_dir() for n in range(3))
    for plot in ("tune_history.png", "tune_importance.png"):
        assert (run / plot).stat().st_size > 10_000
    err = capsys.readouterr().err
    assert "the test set was not used" in err and f"dashboard: optuna-dashboard sqlite:///{run.resolve()}" in err
    assert f"next: fashion-cnn train --config {(run / 'best_config.toml').resolve()}" in err

    assert dashboard_studies(f"sqlite:///{run.resolve() / 'study.db'}") == ["fashion-cnn"]

    config = tomllib.loads((run / "best_config.toml").read_text())
    assert config["lr"] == study.best_params["lr"] and config["batch_size"] == study.best_params["batch_size"]
    assert "val_size" not in config and "folds" not in config  # the final model trains on all training images
    assert main(["train", "--config", str(run / "best_config.toml"), "--out", str(tmp_path / "final"),
                 "--device", "cpu"]) == 0
    [final] = (tmp_path / "final").iterdir()
    saved = json.loads((final / "config.json").read_text())
    assert (saved["lr"], saved["batch_size"], saved["val_size"]) == (config["lr"], config["batch_size"], 0)
    assert (final / "model.safetensors").is_file()


def test_the_best_config_names_the_training_images_its_limit_keeps(tiny_data_dir, tmp_path, capsys):
    assert main(tune_args(tiny_data_dir, tmp_path / "runs", "--trials", "1", "--limit", "120", lr="0.01")) == 0
    [run] = (tmp_path / "runs").iterdir()
    text = (run / "best_config.toml").read_text()
    assert tomllib.loads(text)["limit"] == 120
    assert "# Train the final model on the first 120 training images: fashion-cnn train --config" in text
    assert "next: fashion-cnn train --config" in capsys.readouterr().err
    assert "all training images" not in text


def dashboard_studies(url: str) -> list[str]:
    """The study names optuna-dashboard lists for a storage: it opens it (the command the report prints)."""
    pytest.importorskip("optuna_dashboard", reason="the tune extra's optuna-dashboard is not installed")
    from server_harness import free_port

    port = free_port()
    script = "import sys; from optuna_dashboard._cli import main; sys.argv[0] = 'optuna-dashboard'; main()"
    with subprocess.Popen([sys.executable, "-c", script, url, "--port", str(port)], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL) as dashboard:
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as answer:
                        return [s["study_name"] for s in json.load(answer)["study_summaries"]]
                except OSError:
                    assert dashboard.poll() is None and time.monotonic() < deadline, "optuna-dashboard did not start"
                    time.sleep(0.5)
        finally:
            dashboard.terminate()


def test_a_killed_study_keeps_its_trials_and_continues_the_interrupted_one(tiny_data_dir, tmp_path, monkeypatch):
    values = tune_values(tune_args(tiny_data_dir, tmp_path / "runs", "--trials", "3", "--epochs", "2"), monkeypatch)
    # trial 1's second epoch: killed before its checkpoint (each trial checkpoints 2 epochs)
    run_killed_at(monkeypatch, train, "save_checkpoint", 4, lambda: tune(values))
    [run] = (tmp_path / "runs").iterdir()
    storage = f"sqlite:///{run / 'study.db'}"
    before = optuna.load_study(study_name="fashion-cnn", storage=storage).trials
    assert [t.state.name for t in before] == ["COMPLETE", "RUNNING"]
    [trial_run] = (run / "trials" / "0001").iterdir()

    assert main(["tune", "--resume", str(run)]) == 0
    after = optuna.load_study(study_name="fashion-cnn", storage=storage).trials
    assert [t.state.name for t in after] == ["COMPLETE"] * 3
    assert (after[0].value, after[0].params) == (before[0].value, before[0].params)  # kept, not run again
    assert after[1].params == before[1].params and after[1].user_attrs["run_dir"] == str((trial_run.parent).resolve())
    assert [p.name for p in (run / "trials" / "0001").iterdir()] == [trial_run.name]  # cv's resume, same run
    assert len(json.loads((trial_run / "cv_results.json").read_text())["fold_accuracies"]) == 1


def tune_values(argv: list[str], monkeypatch) -> dict:
    """The values `fashion-cnn ARGV` passes to tune()."""
    captured = {}
    with monkeypatch.context() as m:
        m.setattr(tune_module, "tune", lambda values, resume=None: captured.update(values))
        assert main(argv) == 0
    return captured


def test_poor_trials_are_pruned_and_the_study_goes_on(tiny_data_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(optuna.trial.Trial, "should_prune", lambda self: self.number == 1)
    result = tune(tune_values(tune_args(tiny_data_dir, tmp_path / "runs", "--trials", "3", "--epochs", "2"),
                              monkeypatch))
    assert [t["state"] for t in result.report["history"]] == ["complete", "pruned", "complete"]
    [pruned] = (result.run_dir / "trials" / "0001").iterdir()
    with open(pruned / "metrics.csv") as f:
        assert len(f.readlines()) == 1 + 1  # stopped after its first epoch's report


@pytest.mark.parametrize("bad, message", [(["--trials", "0"], "--trials must be at least 1"),
                                          (["--space", "lr"], "write NAME=RANGE"),
                                          (["--space", "lr=1:0.1"], "low end must be below"),
                                          (["--space", "lr=0.001:1e300:log"], "within float32's range"),
                                          (["--space", "model=evilnet"], "--space model: unknown model 'evilnet'"),
                                          (["--storage", "postgresql://nobody@/none?host=/nonexistent"],
                                           "cannot open"),
                                          (["--storage", "not a url"], "'not a url' is not a database URL")])
def test_bad_tune_options_are_one_line_errors_before_any_run(bad, message, tiny_data_dir, tmp_path, capsys):
    assert main(tune_args(tiny_data_dir, tmp_path / "runs", *bad)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and "Traceback" not in "\n".join(err)
    assert not (tmp_path / "runs").exists()


def test_a_trial_that_cannot_train_fails_alone_and_a_resume_copes_with_it(tiny_data_dir, tmp_path, monkeypatch,
                                                                          capsys):
    """Trial 1 is killed; resumed, it cannot train (as an lr of 4e279 overflowed float32): it fails, and the
    worker goes on with a new trial."""
    values = tune_values(tune_args(tiny_data_dir, tmp_path / "runs", "--trials", "3"), monkeypatch)
    run_killed_at(monkeypatch, tune_module, "cv_in_folder", 2, lambda: tune(values))
    [run] = (tmp_path / "runs").iterdir()
    real = tune_module.cv_in_folder

    def overflowing(folder, *args, **kwargs):
        if folder.name == "0001":
            raise RuntimeError("value cannot be converted to type float without overflow")
        return real(folder, *args, **kwargs)

    monkeypatch.setattr(tune_module, "cv_in_folder", overflowing)
    assert main(["tune", "--resume", str(run)]) == 0
    trials = optuna.load_study(study_name="fashion-cnn", storage=f"sqlite:///{run / 'study.db'}").trials
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert trials[1].user_attrs["error"] == "RuntimeError: value cannot be converted to type float without overflow"
    assert "trial 1: failed (RuntimeError: value cannot be converted" in capsys.readouterr().err


def test_a_kill_as_a_trial_begins_leaves_it_to_its_worker_and_orphans_are_failed(tiny_data_dir, tmp_path,
                                                                                 monkeypatch):
    values = tune_values(tune_args(tiny_data_dir, tmp_path / "runs", "--trials", "2"), monkeypatch)
    run_killed_at(monkeypatch, Dimension, "suggest", 1, lambda: tune(values))  # trial 0, before any value
    [run] = (tmp_path / "runs").iterdir()
    study = optuna.load_study(study_name="fashion-cnn", storage=f"sqlite:///{run / 'study.db'}")
    [begun] = study.trials
    assert begun.state.name == "RUNNING" and begun.user_attrs["worker"] == str(run.resolve()) and not begun.params
    study.ask()  # what an earlier version left when killed between Optuna's ask() and its tag: nobody's trial

    assert main(["tune", "--resume", str(run)]) == 0
    trials = study.trials
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE"]  # the orphan does not count
    assert trials[0].params and trials[1].user_attrs == {"orphan": True} and not trials[1].params


def test_the_space_a_study_searches_is_named_when_a_worker_brings_another():
    study = optuna.create_study()
    tune_module.join(study, {}, {})  # the first worker: the default space
    with pytest.raises(ValueError, match=r"searches another space: the default one \(here lr=0.01:0.1\); give it"):
        tune_module.join(study, {}, {"lr": "0.01:0.1"})


def test_a_fixed_model_in_the_space_sets_the_default_epochs():
    options, dims = search_space({}, {"model": "fast"})
    assert options["model"] == "fast" and Dimension("epochs", 9, 18) in dims


def test_options_from_a_toml_config_and_a_timeout_that_starts_nothing(tiny_data_dir, tmp_path, capsys):
    toml = tmp_path / "tune.toml"
    toml.write_text(f'data = "{tiny_data_dir}"\nout = "{tmp_path / "runs"}"\nfolds = 1\nval_size = 50\ntrials = 5\n'
                    'timeout = 1e-9\n[space]\nlr = "0.01:0.1:log"\nbatch_size = "16,32"\n')
    assert main(["tune", "--config", str(toml), "--epochs", "1"]) == 0
    [run] = (tmp_path / "runs").iterdir()
    config = json.loads((run / "config.json").read_text())
    assert config["space"] == {"lr": "0.01:0.1:log", "batch_size": "16,32"} and config["epochs"] == 1
    err = capsys.readouterr().err
    assert "--timeout 1e-09s reached: no new trial" in err
    assert "search space: lr=0.01:0.1:log weight_decay=1e-06:0.01:log batch_size=16,32 crop=0:4" in err
    assert json.loads((run / "tune_results.json").read_text())["trials"]["complete"] == 0


def test_without_optuna_tune_is_a_one_line_error_before_any_work(tiny_data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "optuna", None)  # as if not installed
    assert main(tune_args(tiny_data_dir, tmp_path / "runs")) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        "fashion-cnn: error: tune needs Optuna: pip install 'fashion-cnn[tune]'"]
    assert not (tmp_path / "runs").exists()


@pytest.fixture
def postgres():
    """A throw-away PostgreSQL server (skipped where it cannot be started, with the reason)."""
    try:
        server = PostgresServer()
        server.start()
    except PostgresUnavailable as e:
        pytest.skip(f"PostgreSQL: {e}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def storage(request, tmp_path):
    """A storage URL for the study: a SQLite file, or the database of a throw-away PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.db'}"
    return request.getfixturevalue("postgres").url


def test_a_killed_process_stops_the_server_it_started(tmp_path):
    """The harness (tests/postgres.py) is also what benchmarks/tune_fast.py runs under: a `kill` of it must
    not leave a PostgreSQL server behind."""
    try:
        PostgresServer()
    except PostgresUnavailable as e:
        pytest.skip(f"PostgreSQL: {e}")
    script = ("import sys, time; sys.path.insert(0, sys.argv[1]); from postgres import PostgresServer\n"
              "server = PostgresServer()\nwith server:\n    print(server.dir, flush=True)\n    time.sleep(120)\n")
    child = subprocess.Popen([sys.executable, "-c", script, str(Path(__file__).parent)], stdout=subprocess.PIPE,
                             text=True)
    folder = Path(child.stdout.readline().strip())
    assert (folder / "data" / "postmaster.pid").exists()
    child.terminate()
    assert child.wait(60) == 128 + 15
    assert not folder.exists()


def test_two_workers_share_one_study_and_a_third_reads_the_best(storage, tiny_data_dir, tmp_path):
    trials = 4
    workers = [subprocess.Popen([sys.executable, "-m", "fashion_cnn", *tune_args(
        tiny_data_dir, tmp_path / f"worker{k}", "--trials", str(trials), "--storage", storage, "--study", "shared")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for k in (1, 2)]
    for worker in workers:
        _, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err[-2000:]
    study = optuna.load_study(study_name="shared", storage=storage.replace("postgresql://", "postgresql+psycopg://"))
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(done) >= trials  # each worker stops once the study has `trials`: together perhaps one more
    numbers = [t.number for t in done]
    assert len(set(numbers)) == len(numbers)
    assert len({json.dumps(t.params, sort_keys=True) for t in done}) == len(done)  # no configuration repeated
    worker_dirs = {t.user_attrs["worker"] for t in done}
    assert worker_dirs == {str(next((tmp_path / f"worker{k}").iterdir()).resolve()) for k in (1, 2)}

    # a third worker (this process: the two above are the ones that must not step on each other) joins with no
    # options of its own, finds the study complete, and reports its best
    assert main(["tune", "--storage", storage, "--study", "shared", "--trials", str(trials),
                 "--out", str(tmp_path / "third")]) == 0
    [run] = (tmp_path / "third").iterdir()
    report = json.loads((run / "tune_results.json").read_text())
    assert not (run / "trials").exists()
    assert (report["best"]["number"], report["best"]["value"]) == (study.best_trial.number, study.best_value)
    assert tomllib.loads((run / "best_config.toml").read_text())["lr"] == study.best_params["lr"]


def test_a_worker_waits_for_its_lost_database_else_stops_with_one_line_and_resumes(postgres, tiny_data_dir, tmp_path,
                                                                                  monkeypatch, capsys):
    real = tune_module.cv_in_folder

    def database_lost_in(trial: str, back_after: float | None):
        """cv_in_folder, with the database server crashing as `trial` ends its training (and restarting)."""
        def training(folder, *args, **kwargs):
            result = real(folder, *args, **kwargs)
            if folder.name == trial:
                postgres.halt()
                if back_after is not None:
                    threading.Timer(back_after, postgres.restart).start()
            return result
        return training

    def worker(out: str, trials: int) -> list[str]:
        return tune_args(tiny_data_dir, tmp_path / out, "--trials", str(trials), "--storage", postgres.url,
                         "--study", "lost")

    monkeypatch.setattr(tune_module, "cv_in_folder", database_lost_in("0000", back_after=3))
    assert main(worker("first", 2)) == 0  # the outage is waited for
    assert "cannot reach the database" in capsys.readouterr().err
    url = postgres.url.replace("postgresql", "postgresql+psycopg")  # as the worker names it
    study = optuna.load_study(study_name="lost", storage=url)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]

    monkeypatch.setattr(tune_module, "STORAGE_PATIENCE", 1.0)
    monkeypatch.setattr(tune_module, "cv_in_folder", database_lost_in("0002", back_after=None))
    assert main(worker("second", 3)) == 1
    [run] = (tmp_path / "second").iterdir()
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith(
        f"fashion-cnn: error: --storage {tune_module.shown(url)}: the database failed (")
    assert "Traceback" not in err
    assert err.strip().endswith(f"`fashion-cnn tune --resume {run}` continues this worker")
    postgres.restart()
    monkeypatch.setattr(tune_module, "cv_in_folder", real)
    assert main(["tune", "--resume", str(run)]) == 0  # the interrupted trial is still this worker's
    trials = optuna.load_study(study_name="lost", storage=url).trials  # a new connection: the old one dropped
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3 and trials[2].user_attrs["worker"] == str(run.resolve())


def test_a_worker_with_other_data_is_refused_and_studies_keep_their_fingerprints(tiny_data_dir):
    """same_data stores the data's SHA-256 in the study; a worker whose training set differs is refused.
    The stored value is what earlier versions wrote (images, labels, then the class names, one per
    line), so studies they started still accept the same data."""
    import dataclasses
    import hashlib

    import optuna

    data = common.load_data(str(tiny_data_dir))
    study = optuna.create_study()
    tune_module.same_data(study, data)
    assert study.user_attrs["data_sha256"] == hashlib.sha256(
        data.train_images.numpy().tobytes() + data.train_labels.numpy().tobytes()
        + "\n".join(data.class_names).encode()).hexdigest()
    tune_module.same_data(study, data)  # the same data again: accepted
    other = dataclasses.replace(data, train_labels=data.train_labels.roll(1))
    with pytest.raises(ValueError, match="was trained on other data"):
        tune_module.same_data(study, other)


def test_a_storage_password_stays_out_of_the_run_and_a_resume_is_given_it_again(tiny_data_dir, tmp_path, capsys):
    """The password of --storage postgresql://user:PASSWORD@... was kept in clear in the run's config.json,
    and so shown in its report.html. (The test server trusts its socket: any password is let in.)"""
    try:
        server = PostgresServer()
        url = server.start()
    except PostgresUnavailable as e:
        pytest.skip(f"PostgreSQL: {e}")
    password = "Pa55-in-clear"
    secret = url.replace("postgresql://fashion@", f"postgresql://fashion:{password}@")
    try:
        assert main(tune_args(tiny_data_dir, tmp_path / "runs", "--trials", "1", "--storage", secret)) == 0
        [run] = (tmp_path / "runs").iterdir()
        assert main(["report", str(run)]) == 0
        assert json.loads((run / "config.json").read_text())["storage"].startswith("postgresql://fashion:***@")
        assert main(["tune", "--resume", str(run)]) == 1  # the URL is given again
        assert "whose password the run does not keep: give its URL again with --storage" in capsys.readouterr().err
        assert main(["tune", "--resume", str(run), "--storage", secret.replace("fashion:", "other:")]) == 1
        assert "give that URL, or no --storage" in capsys.readouterr().err
        assert main(["tune", "--resume", str(run), "--storage", secret]) == 0
        assert "trials: 1 complete" in capsys.readouterr().err
    finally:
        server.stop()
    files = [p for p in run.rglob("*") if p.is_file()]
    assert run / "report.html" in files and run / "config.json" in files and run / "log.txt" in files
    assert [p for p in files if password.encode() in p.read_bytes()] == []


def test_a_resumed_worker_takes_only_the_storage_it_was_saved_with():
    """resumed_storage without a server: the run's own SQLite file (None) takes no --storage."""
    assert tune_module.resumed_storage(None, None) is None
    assert tune_module.resumed_storage("sqlite:////a/b.db", None) == "sqlite:////a/b.db"
    assert tune_module.resumed_storage("postgresql://u:***@h/db", "postgresql://u:pw@h/db") == "postgresql://u:pw@h/db"
    with pytest.raises(ValueError, match="its own study.db"):
        tune_module.resumed_storage(None, "sqlite:////a/b.db")
