"""Search a model's recipe with Optuna (`fashion-cnn tune`): TPE sampling, median pruning, on training data only.

Each trial is an ordinary cv run (k folds, or one --val-size holdout with --folds 1) in the worker's run
directory, trials/<number>/; its objective is the mean validation accuracy, and the test set is never
read. While it trains, the running estimate goes to the pruner at every tenth of the trial's progress,
so a poor trial stops at a fold or epoch boundary.

The study lives in an Optuna storage: by default a SQLite file in the run directory, or any database
(`--storage postgresql://...`) that any number of workers, on one machine or many, join with the same
`--study` name. The first worker's options and search space are stored with the study; a joining worker
takes them, and may only change the options that concern its own machine (WORKER_OPTIONS). Every worker
ends by writing the study's report into its run directory: the best configuration as a `--config` TOML
file, a history plot, a parameter-importance plot, and the command that trains the final model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import socket
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Callable


from fashion_cnn.config import FLOAT_LIMIT, CVConfig, TrainConfig, fmt, type_words
from fashion_cnn.data.fmnist import Dataset
from fashion_cnn.data.folders import fingerprint
from fashion_cnn.io import check_output_dir, write_atomic, write_json
from fashion_cnn.jobs.common import job_data, training_images
from fashion_cnn.jobs.options import DEFAULT_SPACE, DEFAULT_STUDY, DEFAULT_TRIALS
from fashion_cnn.jobs.sweep import check_fits_data, cv_in_folder, cv_record, job_values
from fashion_cnn.reporting.plots import save_figure
from fashion_cnn.training.loop import History, TrainingDiverged, resolve_device
from fashion_cnn.training.runs import open_run, start_log

if TYPE_CHECKING:
    from matplotlib.figure import Figure  # imported where a figure is drawn: the CLI starts without it

log = logging.getLogger("fashion_cnn")

# what a worker may set for itself when it joins a study: where it writes, how it computes, where its copy
# of the data is (checked to be the same data by its fingerprint)
WORKER_OPTIONS = ("out", "device", "threads", "eval_batch_size", "tensorboard", "data", "classes",
                  "test_fraction", "data_dir")
TUNE_KEYS = ("space", "trials", "timeout", "storage", "study")
HIDDEN = "***"  # a password as `shown` writes it (SQLAlchemy's hide_password)
REPORTS = 10  # progress steps at which a trial reports to the pruner: every tenth of its folds and epochs
NO_TEST_SET = "the test set was not used: every trial was scored on the training data only"
ORPHAN = "orphan"  # the user attribute of the trials fail_orphans failed
STORAGE_PATIENCE = 120.0  # seconds a worker waits for its lost database to come back before it stops


def require_optuna():
    try:
        import optuna  # tune's extra, loaded only when a study runs
    except ImportError:
        raise ValueError("tune needs Optuna: pip install 'fashion-cnn[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own one line per trial instead
    return optuna


# --- the search space ---------------------------------------------------------------------------------------

def searchable() -> list[str]:
    """The options a search may vary: the model and its recipe's fields."""
    return ["model"] + [f.name for f in fields(TrainConfig) if "fallback" in f.metadata]


def kind_of(name: str) -> str:
    """An option's value type: int, float, bool or str."""
    annotation = next(f.type for f in fields(CVConfig) if f.name == name)
    return next(a.strip() for a in annotation.split("|") if a.strip() != "None")


def parse_value(name: str, text: str):
    kind = kind_of(name)
    try:
        if kind == "bool":
            if text.lower() not in ("true", "false"):
                raise ValueError
            return text.lower() == "true"
        value = {"int": int, "float": float, "str": str}[kind](text)
        if kind == "float" and not abs(value) <= FLOAT_LIMIT:  # what training computes in; nan too
            raise ValueError
        return value
    except ValueError:
        words = f"a number within float32's range (±{FLOAT_LIMIT:.1e})" if kind == "float" else type_words(kind)
        raise ValueError(f"--space {name}: {text!r} is not {words}") from None


@dataclass(frozen=True)
class Dimension:
    """One searched option: a range (whole numbers for whole-number options; log: sampled evenly in
    the logarithm) or a list of choices."""

    name: str
    low: int | float | None = None
    high: int | float | None = None
    log: bool = False
    choices: tuple = ()

    def suggest(self, trial):
        if self.choices:
            return trial.suggest_categorical(self.name, list(self.choices))
        if isinstance(self.low, int):
            return trial.suggest_int(self.name, self.low, self.high, log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)

    def __str__(self) -> str:
        if self.choices:
            return ",".join(str(c).lower() if isinstance(c, bool) else fmt(c) for c in self.choices)
        return f"{fmt(self.low)}:{fmt(self.high)}" + (":log" if self.log else "")


def parse_dimension(name: str, text: str) -> Dimension | object:
    """NAME=LOW:HIGH[:log] (a range), NAME=A,B,C (choices), or NAME=VALUE (fixed: the value itself)."""
    if name not in searchable():
        raise ValueError(f"--space {name}: not a searchable option; these are: {', '.join(searchable())}")
    if ":" in text:
        parts = text.split(":")
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "log") or kind_of(name) not in ("int", "float"):
            raise ValueError(f"--space {name}={text}: a range is LOW:HIGH or LOW:HIGH:log, of a numeric option")
        low, high = (parse_value(name, p) for p in parts[:2])
        if not low < high:
            raise ValueError(f"--space {name}={text}: the low end must be below the high end")
        if len(parts) == 3 and low <= 0:
            raise ValueError(f"--space {name}={text}: a log range must be above 0")
        return Dimension(name, low, high, log=len(parts) == 3)
    values = tuple(parse_value(name, v) for v in text.split(","))
    if len(values) == 1:
        return values[0]
    if len(set(values)) < len(values):
        raise ValueError(f"--space {name}={text}: a choice is repeated")
    return Dimension(name, choices=values)


def search_space(options: dict, space: dict[str, str]) -> tuple[dict, list[Dimension]]:
    """(options with the fixed values of `space` added, the dimensions searched): the default space, less
    the options given as job options, with `space` (name -> text) laid over it; every value checked, and
    named by its own --space entry when it is wrong."""
    for name in space:
        if name in options:
            raise ValueError(f"--space {name}=...: {name} is also given as --{name.replace('_', '-')}; give one")
    given = {name: parse_dimension(name, str(spec)) for name, spec in space.items()}
    fixed = {name: value for name, value in given.items() if not isinstance(value, Dimension)}
    for name, value in fixed.items():
        CVConfig.from_dict({**options, name: value}, f"--space {name}")
    options = {**options, **fixed}
    CVConfig.from_dict(options, "--space")  # the fixed values together
    model_epochs = CVConfig.from_dict({k: v for k, v in options.items() if k in ("model",)}, None).epochs
    defaults = {k: parse_dimension(k, v or f"{max(1, model_epochs // 2)}:{model_epochs}")
                for k, v in DEFAULT_SPACE.items() if k not in options}
    dimensions = [d for d in {**defaults, **given}.values() if isinstance(d, Dimension)]
    for dim in dimensions:  # each end and choice must be a valid value of its option, with the others
        for value in dim.choices or (dim.low, dim.high):
            CVConfig.from_dict({**options, dim.name: value}, f"--space {dim.name}")
    return options, dimensions


# --- a trial ------------------------------------------------------------------------------------------------

def progress_reporter(trial, cfg: CVConfig, reported: int = 0) -> Callable[[dict[int, History]], None]:
    """cross_validate's on_epoch callback for a trial: at every tenth of the trial's training (its folds and
    epochs) report the running estimate, the mean of the folds' latest validation accuracy, and stop the
    trial (optuna.TrialPruned) when the pruner says so. Steps are tenths of progress, not epochs, so trials
    of different lengths are compared at the same point of their learning-rate schedules. reported: the
    last step reported before (by an interrupted trial)."""
    import optuna  # tune's extra, loaded only when a study runs

    last = [reported]

    def report(histories: dict[int, History]) -> None:
        fold = max(histories)
        progress = (fold - 1 + len(histories[fold]) / cfg.epochs) / cfg.folds
        value = sum(h[-1]["val_accuracy"] for h in histories.values() if h) / len(histories)
        step = math.floor(REPORTS * progress + 1e-9)
        for s in range(last[0] + 1, step + 1):
            trial.report(value, s)
        last[0] = max(last[0], step)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at {100 * progress:.0f}% (running accuracy {100 * value:.2f}%)")

    return report


@dataclass
class Worker:
    """One `fashion-cnn tune` process: its run directory, the study, and what its trials share."""

    dir: Path
    study: object  # optuna.Study
    options: dict  # the study's options, with this worker's own WORKER_OPTIONS
    dimensions: list[Dimension]
    data: Dataset

    @property
    def tag(self) -> dict[str, str]:
        """What marks a trial as this worker's: its --resume continues the trial if a kill interrupts it."""
        return {"worker": str(self.dir.resolve()), "host": socket.gethostname()}

    def new_trial(self):
        """A new trial, created with this worker's tag in one transaction. Optuna's ask() creates a bare
        trial, and a tag set after it would leave, after a kill between the two, a RUNNING trial that no
        worker owns: never continued, yet counted in --trials."""
        import optuna  # tune's extra, loaded only when a study runs

        template = optuna.trial.create_trial(state=optuna.trial.TrialState.RUNNING, user_attrs=self.tag)
        # the study's own storage (Optuna's cache over the database), so that the study sees the trial at once
        return optuna.trial.Trial(self.study, self.study._storage.create_new_trial(self.study._study_id, template))

    def run_trial(self, trial, reported: int = 0) -> None:
        """Train and score one trial (a new one, or this worker's interrupted one, which reported up to
        step `reported`) and tell the study. A trial that cannot run fails alone: the study goes on."""
        import optuna  # tune's extra, loaded only when a study runs

        params = {dim.name: dim.suggest(trial) for dim in self.dimensions}
        label = ", ".join(f"{k}={fmt(v)}" for k, v in params.items())
        try:
            cfg = CVConfig.from_dict({**self.options, **params}, None)
        except ValueError as e:  # a combination the space allows but the options do not
            trial.set_user_attr("error", str(e))
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            log.info(f"trial {trial.number}: {label}: not a valid config ({e})")
            return
        folder = self.dir / "trials" / f"{trial.number:04d}"
        trial.set_user_attr("run_dir", str(folder.resolve()))
        log.info(f"trial {trial.number}: {label}")
        t0, cpu0 = time.perf_counter(), time.process_time()
        attrs = {}
        try:
            result = cv_in_folder(folder, cfg, self.data, on_epoch=[progress_reporter(trial, cfg, reported)])
        except (optuna.TrialPruned, TrainingDiverged) as e:
            # a diverged trial counts as pruned: the sampler then steers away from it (a failed one it ignores)
            outcome, value, state = str(e), None, optuna.trial.TrialState.PRUNED
        except storage_errors():
            raise  # the database's, not the trial's: the worker stops (tune), the trial stays this worker's
        except Exception as e:  # e.g. a value the arithmetic cannot hold: this trial fails, not the study
            attrs["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            outcome, value, state = f"failed ({attrs['error']})", None, optuna.trial.TrialState.FAIL
        else:
            record = cv_record(result)
            attrs = {key: record[key] for key in ("val_accuracy_std", "val_loss", "best_epoch", "train_cpu_seconds")}
            outcome, value, state = f"{100 * result.mean:.2f}%", result.mean, optuna.trial.TrialState.COMPLETE
        finally:
            start_log(self.dir)  # the trial's cv job logged to its own directory
        # the study is written to once the worker's log is back: what it says of its database goes there
        attrs |= {"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - cpu0}
        for key, attr in attrs.items():
            trial.set_user_attr(key, attr)
        self.study.tell(trial, value, state=state)
        log.info(f"trial {trial.number}: {outcome}")

    def interrupted_trials(self) -> list:
        """This worker's trials a kill left running, to continue (through cv's resume) before new ones."""
        import optuna  # tune's extra, loaded only when a study runs

        running = self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        return [t for t in running if t.user_attrs.get("worker") == self.tag["worker"]]

    def fail_orphans(self) -> None:
        """Fail the RUNNING trials that no worker owns, which earlier versions left when a kill came between
        Optuna's ask() and their tag (new_trial creates trials tagged): nobody would ever finish them.
        They are marked, and not counted in --trials."""
        import optuna  # tune's extra, loaded only when a study runs

        running = self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        for orphan in (t for t in running if "worker" not in t.user_attrs):
            try:
                optuna.trial.Trial(self.study, orphan._trial_id).set_user_attr(ORPHAN, True)
                self.study.tell(orphan.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # another worker failed it first
            log.info(f"trial {orphan.number}: no worker owns it (its worker was stopped as it began it): failed")

    def counted_trials(self) -> int:
        """The trials that count in --trials: all but the orphans."""
        return sum(not t.user_attrs.get(ORPHAN) for t in self.study.get_trials(deepcopy=False))


def storage_errors() -> tuple[type[Exception], ...]:
    """The errors of a database that went away or refused a request (Optuna wraps SQLAlchemy's in its own)."""
    import optuna  # tune's extra, loaded only when a study runs
    from sqlalchemy.exc import OperationalError  # Optuna's, tune's extra

    return optuna.exceptions.StorageInternalError, OperationalError


# --- the job ------------------------------------------------------------------------------------------------

def storage_url(url: str | None, run_dir: Path) -> str:
    """--storage, or the SQLite file in the run directory; postgresql:// goes through psycopg (3)."""
    from sqlalchemy.engine import make_url  # Optuna's, tune's extra
    from sqlalchemy.exc import ArgumentError  # Optuna's, tune's extra

    if url is None:
        return f"sqlite:///{(run_dir / 'study.db').resolve()}"
    try:
        make_url(url)
    except ArgumentError:
        raise ValueError(f"--storage {url!r} is not a database URL, e.g. postgresql://USER@HOST/DATABASE or "
                         "sqlite:///PATH/study.db") from None
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


def shown(url: str) -> str:
    """A storage URL with its password hidden, for logs, reports and the run's config.json."""
    from sqlalchemy.engine import make_url  # Optuna's; tune's extra, not the CLI's

    return make_url(url).render_as_string(hide_password=True)


def resumed_storage(saved: str | None, given: str | None) -> str | None:
    """The storage URL of a resumed worker. Its config.json keeps the URL as `shown` writes it, the password
    hidden: such a URL is given again with --storage, and must be the saved one but for the password; any
    other may be given or left out (as may the run's own SQLite file, saved as None)."""
    from sqlalchemy.engine import make_url  # Optuna's, tune's extra

    if given is None:
        if saved is not None and make_url(saved).password == HIDDEN:
            raise ValueError(f"the study is in {saved}, whose password the run does not keep: "
                             "give its URL again with --storage")
        return saved
    if saved is None or shown(given) != shown(saved):
        raise ValueError(f"--storage {shown(given)}: this worker's study is in "
                         f"{shown(saved) if saved else 'its own study.db'}; give that URL, or no --storage")
    return given


def open_study(url: str, name: str):
    """The study `name` in the storage, created if it is not there yet (by whichever worker comes first)."""
    optuna = require_optuna()
    # a connection the database dropped (a restart, an idle timeout) is replaced before use, not failed
    engine = {"pool_pre_ping": True}
    if url.startswith("sqlite"):  # several processes take turns at the file's lock; wait for it rather than fail
        engine["connect_args"] = {"timeout": 60}
    for attempt in range(3):  # workers that start together race to create the tables: the loser tries again
        try:
            storage = optuna.storages.RDBStorage(url, engine_kwargs=engine)
            break
        except Exception as e:  # the database's own errors: unreachable, refused, not a database
            if attempt == 2:
                raise ValueError(f"--storage {shown(url)}: cannot open ({first_line(e)})") from None
            time.sleep(0.5 + attempt)
    keep_connecting(storage.engine, url)
    return optuna.create_study(storage=storage, study_name=name, direction="maximize", load_if_exists=True,
                               sampler=optuna.samplers.TPESampler(),  # constant liar: workers sample apart
                               pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2))


def keep_connecting(engine, url: str) -> None:
    """Once the study is open, a database that goes away (a restart, a network outage) is waited for, up to
    STORAGE_PATIENCE seconds, at each new connection: the worker carries on where it was."""
    from sqlalchemy import event  # Optuna's, tune's extra

    def connect(dialect, record, cargs, cparams):
        deadline, delay = time.monotonic() + STORAGE_PATIENCE, 0.5
        while True:
            try:
                return dialect.connect(*cargs, **cparams)
            except dialect.loaded_dbapi.OperationalError as e:
                if time.monotonic() + delay > deadline:
                    raise
                if delay == 0.5:
                    log.info(f"--storage {shown(url)}: cannot reach the database ({first_line(e)}); waiting up to "
                             f"{STORAGE_PATIENCE:g} s for it")
                time.sleep(delay)
                delay = min(2 * delay, 10)

    event.listen(engine, "do_connect", connect)


def first_line(error: BaseException) -> str:
    """An error's first line, from the error underneath where Optuna wraps the database's (its own says nothing)."""
    while error.__cause__ is not None:
        error = error.__cause__
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]


@contextlib.contextmanager
def storage_lost(url: str, run_dir: Path | None = None):
    """The database's errors, once the reconnection gave up, as one line; with the command that continues
    this worker when it has a run directory (its trial in progress stays its own)."""
    try:
        yield
    except storage_errors() as e:
        raise ValueError(f"--storage {shown(url)}: the database failed ({first_line(e)})" + (
            f"; `fashion-cnn tune --resume {run_dir}` continues this worker" if run_dir else "")) from None


def join(study, options: dict, space: dict) -> tuple[dict, dict]:
    """The options and space this worker runs with: the study's, where a worker joins one; a joining
    worker's own options may only differ in WORKER_OPTIONS."""
    theirs = study.user_attrs
    if "options" not in theirs:
        for key, value in (("options", options), ("space", space)):
            study.set_user_attr(key, value)
        theirs = study.user_attrs  # two first workers at once: the last one to write wins, the other is told
    shared = {k: v for k, v in options.items() if k not in WORKER_OPTIONS}
    study_shared = {k: v for k, v in theirs["options"].items() if k not in WORKER_OPTIONS}
    differ = [k for k in sorted(set(shared) | set(study_shared)) if shared.get(k) != study_shared.get(k)]
    if shared and differ:
        raise ValueError(f"study {study.study_name!r} runs other options: " + ", ".join(
            f"--{k.replace('_', '-')} {study_shared.get(k)!r} (here {shared.get(k)!r})" for k in differ)
            + "; give the study's options or none, or another --study")
    if space and space != theirs["space"]:
        def described(changes: dict) -> str:
            return " ".join(f"{k}={v}" for k, v in changes.items()) if changes else "the default one"

        raise ValueError(f"study {study.study_name!r} searches another space: {described(theirs['space'])} (here "
                         f"{described(space)}); give it or none")
    own = {k: v for k, v in options.items() if k in WORKER_OPTIONS}
    return {**theirs["options"], **own}, theirs["space"]


def same_data(study, data: Dataset) -> None:
    """Every worker of a study trains on the same images, wherever its copy of them is."""
    ours = fingerprint(data.train_images, data.train_labels, names=data.class_names)  # what a trial trains on
    theirs = study.user_attrs.get("data_sha256")
    if theirs is None:
        study.set_user_attr("data_sha256", ours)
    elif theirs != ours:
        raise ValueError(f"study {study.study_name!r} was trained on other data (training set SHA-256 "
                         f"{theirs[:12]}..., here {ours[:12]}...): give this worker the same data")


@dataclass
class TuneResult:
    """What a worker leaves: its run directory, and the study's report (tune_results.json)."""

    run_dir: Path
    report: dict

    @property
    def best_config(self) -> Path:
        return self.run_dir / "best_config.toml"


def split_values(values: dict) -> tuple[dict, dict]:
    """(job options, tune settings) of the values from the command line, --config or a run's config.json."""
    values = dict(values)
    settings = {k: values.pop(k) for k in TUNE_KEYS if k in values}
    if not isinstance(settings.get("space", {}), dict):
        raise ValueError("space: a table of option names and ranges, e.g. lr = \"0.001:0.1:log\"")
    for key, ok, rule in (("trials", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "at least 1"),
                          ("timeout", lambda v: isinstance(v, (int, float)) and math.isfinite(v) and v > 0,
                           "a positive number of seconds"),
                          ("storage", lambda v: isinstance(v, str) and v, "a database URL"),
                          ("study", lambda v: isinstance(v, str) and v, "a name")):
        if settings.get(key) is not None and not ok(settings[key]):
            raise ValueError(f"--{key} must be {rule}, got {settings[key]!r}")
    return values, settings


def tune(values: dict | None = None, resume: str | Path | None = None) -> TuneResult:
    """Run one worker of a study: the options (job options plus space, trials, timeout, storage, study; as
    `fashion-cnn tune` takes them), or those saved in `resume`, an interrupted worker's run directory."""
    require_optuna()
    values = dict(values or {})
    given_storage = values.pop("storage", None) if resume is not None else None  # the one option a resume takes
    options, settings = split_values(job_values("tune", values, resume))
    storage = resumed_storage(settings.get("storage"), given_storage) if resume else settings.get("storage")
    space = {k: str(v) for k, v in settings.get("space", {}).items()}  # --space: changes to the default space
    name = settings.get("study", DEFAULT_STUDY)
    check_output_dir(CVConfig.from_dict(options, None).out)
    url = study = None
    if storage or resume:  # an existing study: join it before this worker makes its directory
        url = storage_url(storage, Path(resume or "."))
        study = open_study(url, name)
        with storage_lost(url):
            options, space = join(study, options, space)
    fixed, dimensions = search_space(options, space)
    base = CVConfig.from_dict(fixed, None)
    resolve_device(base.device)  # --device cuda on a machine without a GPU fails here
    data = job_data(base)
    if study is not None:
        with storage_lost(url):
            same_data(study, data)
    check_fits_data(base, data)
    trials = settings.get("trials", DEFAULT_TRIALS)
    # the password stays out of the run directory: a resume is given the URL again (resumed_storage)
    saved = {**options, **settings, "space": space} | ({"storage": shown(storage)} if storage else {})
    with open_run(saved, "tune", base.out, resume) as run:
        if study is None:  # a new study in the run directory's own SQLite file
            url = storage_url(None, run.dir)
            study = open_study(url, name)
            join(study, options, space)
            same_data(study, data)
        with storage_lost(url, run.dir):
            report = run_worker(Worker(run.dir, study, fixed, dimensions, data), url, base,
                                trials, settings.get("timeout"))
    return TuneResult(run.dir, report)


def run_worker(worker: Worker, url: str, base: CVConfig, trials: int, timeout: float | None) -> dict:
    """The worker's trials: its interrupted ones, then new ones while the study has fewer than `trials`
    (and `timeout` has not passed); then the study's report."""
    import optuna  # tune's extra, loaded only when a study runs

    study = worker.study
    objective = (f"mean validation accuracy of {base.folds}-fold cross-validation" if base.folds > 1 else
                 f"validation accuracy on a fixed {base.val_size}-image split") + " of the training set"
    log.info(f"tune: {worker.dir}, study {study.study_name!r} in {shown(url)}\nobjective: {objective}; "
             f"{NO_TEST_SET}\nsearch space: " + " ".join(f"{d.name}={d}" for d in worker.dimensions)
             + f"\nmore workers: fashion-cnn tune --storage {shown(url)} --study {study.study_name}")
    started = time.perf_counter()
    worker.fail_orphans()
    for frozen in worker.interrupted_trials():
        log.info(f"trial {frozen.number}: continuing where it was interrupted")
        # Optuna's Trial over an existing trial: its sampled values come back, and it reports on
        worker.run_trial(optuna.trial.Trial(study, frozen._trial_id), max(frozen.intermediate_values, default=0))
    while worker.counted_trials() < trials:
        if timeout is not None and time.perf_counter() - started > timeout:
            log.info(f"--timeout {timeout:g}s reached: no new trial")
            break
        worker.run_trial(worker.new_trial())
    return write_report(worker.dir, study, url, objective, worker.options)


# --- the report ---------------------------------------------------------------------------------------------

def final_config(options: dict, params: dict) -> dict:
    """The best trial's configuration as `train` options: the study's fixed options and the trial's
    values, less what only concerns this machine or cross-validation (the final model trains on the
    validation images too), every recipe field written out."""
    cfg = dataclasses.asdict(TrainConfig.from_dict(
        {k: v for k, v in {**options, **params}.items() if k in {f.name for f in fields(TrainConfig)}}, None))
    drop = ("out", "device", "threads", "eval_batch_size", "tensorboard", "val_size", "early_stopping")
    return {k: v for k, v in cfg.items() if k not in drop and v is not None}


def toml_text(values: dict, comments: list[str]) -> str:
    """Flat key = value TOML (strings, numbers, booleans): what a --config file holds."""

    def literal(v) -> str:
        return str(v).lower() if isinstance(v, bool) else json.dumps(v) if isinstance(v, str) else repr(v)

    return "".join(f"# {c}\n" for c in comments) + "".join(f"{k} = {literal(v)}\n" for k, v in values.items())


def write_report(run_dir: Path, study, url: str, objective: str, options: dict) -> dict:
    """tune_results.json, best_config.toml, tune_history.png, tune_importance.png and the printed
    summary, from every trial in the study (all workers')."""
    import optuna  # tune's extra, loaded only when a study runs

    states = optuna.trial.TrialState
    all_trials = study.get_trials(deepcopy=False)
    counts = {s.name.lower(): sum(t.state == s for t in all_trials) for s in
              (states.COMPLETE, states.PRUNED, states.FAIL, states.RUNNING)}
    report = {"study": study.study_name, "storage": shown(url), "objective": objective, "test_set": NO_TEST_SET,
              "trials": counts, "cpu_seconds": sum(t.user_attrs.get("cpu_seconds", 0) for t in all_trials),
              "history": [{"number": t.number, "state": t.state.name.lower(), "value": t.value, "params": t.params,
                           **t.user_attrs} for t in all_trials]}
    save_figure(history_figure(all_trials), run_dir / "tune_history.png")
    lines = ["trials: " + ", ".join(f"{n} {k}" for k, n in counts.items() if n)]
    if counts["complete"]:
        best = study.best_trial
        config = final_config(options, best.params)
        command = f"fashion-cnn train --config {(run_dir / 'best_config.toml').resolve()}"
        write_atomic(run_dir / "best_config.toml", toml_text(config, [
            f"fashion-cnn tune: the best of {len(all_trials)} trials of study {study.study_name!r}: trial "
            f"{best.number}, {objective}: {100 * best.value:.2f}%", f"{NO_TEST_SET}.",
            f"Train the final model on {training_images(config.get('limit'))}: {command}"]).encode())
        importance = importances(study)
        if importance:
            save_figure(importance_figure(importance, counts["complete"]), run_dir / "tune_importance.png")
        report |= {"best": {"number": best.number, "value": best.value, "params": best.params, **best.user_attrs},
                   "importance": importance, "best_config": str(run_dir / "best_config.toml"), "command": command}
        lines += [f"best: trial {best.number}, {100 * best.value:.2f}% ("
                  + ", ".join(f"{k}={fmt(v)}" for k, v in best.params.items()) + ")",
                  f"best config: {run_dir / 'best_config.toml'}",
                  "plots: " + ", ".join(str(run_dir / f) for f in ("tune_history.png", "tune_importance.png")
                                        if (run_dir / f).exists()),
                  f"{NO_TEST_SET} ({objective})",
                  f"next: {command}  (trains on {training_images(config.get('limit'))}, tests once)"]
    write_json(run_dir / "tune_results.json", report)
    lines += [f"results: {run_dir / 'tune_results.json'}", f"dashboard: optuna-dashboard {shown(url)}"]
    log.info("\n".join(lines))
    return report


def importances(study) -> dict[str, float]:
    """Parameter importances over the complete trials by fANOVA (a random forest's variance decomposition,
    seeded; Optuna's default, PED-ANOVA, says nothing until there are a few dozen trials); none where
    there are too few trials to tell."""
    import optuna  # tune's extra, loaded only when a study runs

    try:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        return dict(optuna.importance.get_param_importances(study, evaluator=evaluator))
    except (RuntimeError, ValueError) as e:
        log.info(f"no parameter importances yet ({e})")
        return {}


def history_figure(trials: list) -> Figure:
    """Objective per trial (complete: dots; pruned: crosses at their last reported value) and the best so far."""
    from matplotlib.figure import Figure  # where a figure is drawn: the CLI starts without matplotlib
    from matplotlib.ticker import MaxNLocator  # likewise

    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    done = [t for t in trials if t.state.name == "COMPLETE"]
    pruned = [t for t in trials if t.state.name == "PRUNED" and t.intermediate_values]
    ax.plot([t.number for t in done], [100 * t.value for t in done], "o", color="tab:blue", label="complete")
    if pruned:
        ax.plot([t.number for t in pruned], [100 * t.intermediate_values[max(t.intermediate_values)] for t in pruned],
                "x", color="tab:gray", label="pruned (last reported)")
    best, xs, ys = -math.inf, [], []
    for t in sorted(done, key=lambda t: t.number):
        best = max(best, t.value)
        xs.append(t.number)
        ys.append(100 * best)
    ax.step(xs, ys, where="post", color="tab:red", label="best so far")
    ax.set(title=f"Search history ({len(trials)} trials)", xlabel="trial", ylabel="validation accuracy (%)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def importance_figure(importance: dict[str, float], complete: int) -> Figure:
    """Parameter importances as horizontal bars, the most important on top."""
    from matplotlib.figure import Figure  # where a figure is drawn: the CLI starts without matplotlib

    names = list(importance)[::-1]
    fig = Figure(figsize=(6, 0.5 * len(names) + 1.5))
    ax = fig.subplots()
    ax.barh(names, [importance[n] for n in names], color="tab:blue")
    ax.set(title=f"Parameter importance (fANOVA, {complete} complete trials)", xlabel="importance (sums to 1)")
    ax.grid(alpha=0.3, axis="x")
    return fig
