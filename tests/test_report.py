"""HTML reports of runs: one self-contained file, its numbers those of the run's files, its galleries those of
the confusion matrix, per-example results kept and reused, reports of cv, train, `evaluate --out` and several
runs. Runs train for a second on the tiny IDX data (100 test images); tests/test_report_browser.py opens
the reports in real browsers."""

import json
import os
import re
import shutil
import stat
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_dataset_dir, tiny_arrays, write_idx_gz

from fashion_cnn.app.cli import main
from fashion_cnn.config import CVConfig, TrainConfig
from fashion_cnn.data.fmnist import FILES, load_fashion_mnist
from fashion_cnn.evaluation.metrics import evaluate_model
from fashion_cnn.io import load_tensors
from fashion_cnn.jobs.crossval import cross_validate
from fashion_cnn.jobs.evaluate import write_reports
from fashion_cnn.jobs.final import train_final
from fashion_cnn.models.files import load_model, save_model
from fashion_cnn.models.registry import create_model
from fashion_cnn.reporting import report


class Page(HTMLParser):
    """Every tag's attributes, the ids, the text of <style> and of <script>, and the values the report marks
    with data-name."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags, self.ids, self.styles, self.scripts, self.values = [], set(), [], [], {}
        self.inside = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if "data-name" in attrs:
            self.values[attrs["data-name"]] = float(attrs["data-value"])
        self.inside = tag if tag in ("style", "script") else None

    def handle_data(self, data):
        if self.inside == "style":
            self.styles.append(data)
        elif self.inside == "script":
            self.scripts.append(data)

    def handle_endtag(self, tag):
        self.inside = None

    def examples(self) -> dict:
        return json.loads(next(s for s in self.scripts if s.startswith('{"classes"')))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny IDX data with 15 of its 100 test labels wrong, so that the confusion matrix has confusions
    (the classes are easy) and the highest losses are mislabelled items, as in Fashion-MNIST."""
    directory = make_dataset_dir(tmp_path_factory.mktemp("tiny"), n_train=300, n_test=100)
    labels = tiny_arrays(100, 1)[1]
    rng = np.random.default_rng(0)
    wrong = rng.choice(100, 15, replace=False)
    labels[wrong] = (labels[wrong] + rng.integers(1, 10, 15)) % 10
    write_idx_gz(directory / FILES["test_labels"].name, labels)
    return load_fashion_mnist(directory, check=False)


@pytest.fixture(scope="module")
def train_run(tiny, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    return train_final(TrainConfig(epochs=2, out=str(out), data=tiny.source), data=tiny).run_dir


@pytest.fixture(scope="module")
def cv_run(tiny, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    return cross_validate(CVConfig(folds=3, epochs=2, out=str(out), data=tiny.source), data=tiny).run_dir


def page_of(run_dir: Path) -> Page:
    return Page((run_dir / "report.html").read_text())


def references(page: Page) -> list[str]:
    """Every address the page refers to: attributes and CSS url(...)s, inline styles included."""
    found = [value for _, attrs in page.tags for key, value in attrs.items() if key in ("src", "href", "action")]
    css = " ".join(page.styles + [attrs.get("style", "") for _, attrs in page.tags])
    return found + re.findall(r"url\(([^)]*)\)", css)


@pytest.mark.parametrize("which", ["train_run", "cv_run"])
def test_the_report_is_one_file_that_refers_to_nothing_outside(which, request):
    run_dir = request.getfixturevalue(which)
    text = (run_dir / "report.html").read_text()
    page = Page(text)
    assert "http://" not in text and "https://" not in text
    found = references(page)
    assert found  # the check sees the figures
    for address in found:
        assert address.startswith("data:") or (address.startswith("#") and address[1:] in page.ids), address
    assert not any("src" in attrs for tag, attrs in page.tags if tag == "script")


def test_the_train_report_shows_the_run_files_numbers(train_run):
    page = page_of(train_run)
    test = json.loads((train_run / "test_report.json").read_text())
    assert page.values["accuracy"] == test["accuracy"] and page.values["loss"] == test["loss"]
    assert page.values["macro-f1"] == pytest.approx(np.mean([row["f1"] for row in test["per_class"]]), abs=1e-12)
    for i, row in enumerate(test["per_class"]):
        for key in ("precision", "recall", "f1", "support"):
            assert page.values[f"{key}-{i}"] == row[key]

    cells = {(int(a["data-true"]), int(a["data-pred"])): a for tag, a in page.tags
             if tag == "button" and "style" in a}
    text = (train_run / "report.html").read_text()
    shown = re.findall(r'data-true="(\d+)" data-pred="(\d+)" style="[^"]*" title="[^"]*">(\d+)</button>', text)
    matrix = np.zeros_like(np.asarray(test["confusion_matrix"]))
    for t, p, count in shown:
        matrix[int(t), int(p)] = int(count)
    assert len(cells) == matrix.size and np.array_equal(matrix, test["confusion_matrix"])

    # the gallery's examples make the same matrix
    examples = page.examples()
    recount = np.zeros_like(matrix)
    np.add.at(recount, (examples["labels"], examples["predicted"]), 1)
    assert np.array_equal(recount, matrix)


def ece(probabilities: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error, bin by bin: (lo, hi] confidence bins of equal width."""
    confidence, correct = probabilities.max(1), probabilities.argmax(1) == labels
    total = 0.0
    for k in range(bins):
        inside = (confidence > k / bins) & (confidence <= (k + 1) / bins)
        if inside.any():
            total += inside.sum() * abs(correct[inside].mean() - confidence[inside].mean())
    return total / len(labels)


def test_calibration_is_that_of_the_kept_predictions(train_run, tiny):
    tensors, meta = load_tensors(train_run / report.PREDICTIONS)
    model, _ = load_model(train_run / "model.safetensors")
    from fashion_cnn.evaluation.inference import predict_logits

    assert torch.equal(tensors["logits"], predict_logits(model, tiny.test_images))
    assert torch.equal(tensors["labels"], tiny.test_labels)
    probabilities = torch.softmax(tensors["logits"], 1).numpy()
    assert page_of(train_run).values["ece"] == pytest.approx(ece(probabilities, tiny.test_labels.numpy()), abs=1e-6)
    assert report.expected_calibration_error(np.eye(3)[[0, 1, 2]], np.array([0, 1, 2])) == 0.0
    # always 60% sure, right half the time: 0.1 off
    assert report.expected_calibration_error(np.tile([0.6, 0.4], (4, 1)), np.array([0, 0, 1, 1])) == \
        pytest.approx(0.1)


def test_probabilities_are_the_calibrated_ones_predict_gives():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.4, 0.0]])
    meta = {"calibration": {"temperature": 0.5}}
    assert np.allclose(report.calibrated(logits, meta, "m"), torch.softmax(logits / 0.5, 1).numpy())
    assert np.allclose(report.calibrated(logits, {}, "m"), torch.softmax(logits, 1).numpy())  # uncalibrated


def test_the_highest_loss_examples_come_first_with_heat_maps(train_run):
    text = (train_run / "report.html").read_text()
    section = text.split('<section id="losses">', 1)[1].split("</section>", 1)[0]
    shown = [float(x) for x in re.findall(r"loss (\d+\.\d\d)</small>", section)]
    assert len(shown) == report.HIGHEST_LOSSES and shown == sorted(shown, reverse=True)
    assert section.count('class="heat"') == report.HIGHEST_LOSSES


def test_the_cv_report_shows_folds_and_their_summary(cv_run):
    page = page_of(cv_run)
    results = json.loads((cv_run / "cv_results.json").read_text())
    assert [page.values[f"fold-{k + 1}"] for k in range(3)] == results["fold_accuracies"]
    assert page.values["cv-mean"] == results["mean"] and page.values["cv-std"] == results["std"]
    text = (cv_run / "report.html").read_text()
    assert "galleries" in text and "need a model" in text and 'id="examples"' not in text


def test_kept_predictions_are_reused_until_the_model_changes(train_run, tiny, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    shutil.copytree(train_run, run_dir)

    def no_model_runs(*args, **kwargs):
        raise AssertionError("the model ran again")

    monkeypatch.setattr(report, "predict_logits", no_model_runs)
    report.write_report(run_dir, tiny)
    monkeypatch.undo()

    model, meta = load_model(run_dir / "model.safetensors")
    torch.manual_seed(5)
    save_model(run_dir / "model.safetensors", create_model("baseline"), meta)
    report.write_report(run_dir, tiny)
    tensors, kept = load_tensors(run_dir / report.PREDICTIONS)
    fresh, _ = load_model(run_dir / "model.safetensors")
    from fashion_cnn.evaluation.inference import predict_logits

    assert torch.equal(tensors["logits"], predict_logits(fresh, tiny.test_images))

    (run_dir / report.PREDICTIONS).unlink()  # a new file: the tensors above are mapped from the old one
    (run_dir / report.PREDICTIONS).write_bytes(b"damaged")  # made again, not an error
    report.write_report(run_dir, tiny)
    assert torch.equal(load_tensors(run_dir / report.PREDICTIONS)[0]["logits"], tensors["logits"])


def test_evaluate_out_writes_a_report_that_outlives_the_model_file(train_run, real_data, tmp_path, capsys):
    model = tmp_path / "model.safetensors"
    shutil.copy(train_run / "model.safetensors", model)
    out = tmp_path / "evaluation"
    assert main(["evaluate", "--model", str(model), "--data-dir", real_data.source, "--out", str(out)]) == 0
    assert f"report: {out / 'report.html'}" in capsys.readouterr().out
    text = (out / "report.html").read_text()
    assert f"fashion-cnn evaluate --model {model}" in text and 'class="heat"' in text

    model.unlink()
    assert main(["report", str(out), "--data-dir", real_data.source]) == 0
    assert capsys.readouterr().out == f"report: {out / 'report.html'}\n"
    page = page_of(out)
    assert page.values["accuracy"] == json.loads((out / "test_report.json").read_text())["accuracy"]
    assert 'class="heat"' not in (out / "report.html").read_text()  # no model, no heat maps; the rest is there
    assert page.examples()["labels"] == real_data.test_labels.tolist()


def test_class_names_come_from_the_model(train_run, tiny, tmp_path):
    model, meta = load_model(train_run / "model.safetensors")
    names = [f"kind {chr(65 + i)}" for i in range(10)]
    path = tmp_path / "named.safetensors"
    save_model(path, model, {**meta, "class_names": names})
    out = tmp_path / "evaluation"
    write_reports(evaluate_model(model, tiny.test_images, tiny.test_labels, names), out)
    page = Page(report.write_report(out, tiny, path).read_text())
    assert page.examples()["classes"] == names
    assert re.findall(r'<th class="predicted"><span>([^<]*)</span>', (out / "report.html").read_text()) == names


def test_several_runs_make_one_comparison(train_run, cv_run, tmp_path, capsys):
    out = tmp_path / "both.html"
    assert main(["report", str(train_run), str(cv_run), "--out", str(out)]) == 0
    assert capsys.readouterr().out == f"report: {out}\n"
    page = Page(out.read_text())
    test = json.loads((train_run / "test_report.json").read_text())
    cv = json.loads((cv_run / "cv_results.json").read_text())
    assert page.values["accuracy-0"] == test["accuracy"] and page.values["cv-mean-1"] == cv["mean"]
    assert page.values["ece-0"] == page_of(train_run).values["ece"]
    for address in references(page):
        assert address.startswith("data:") or address[1:] in page.ids


def test_a_damaged_metrics_file_is_named(cv_run, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(cv_run, run_dir)
    (run_dir / "cv_results.json").write_text("{")
    assert main(["report", str(run_dir)]) == 1
    assert capsys.readouterr().err.startswith(f"fashion-cnn: error: {run_dir / 'cv_results.json'}: not valid JSON")


@pytest.mark.parametrize("argv, message", [
    (["report", "/nonexistent"], "/nonexistent: not a run directory (no config.json or test_report.json)"),
    (["report", "RUN", "RUN"], "the same run is named twice"),
    (["report", "RUN", "RUN", "--data-dir", "/tmp"],
     "--data-dir is for the report of one run; a comparison reads only the runs' files"),
])
def test_bad_report_requests_are_one_line_errors(argv, message, train_run, capsys):
    argv = [str(train_run) if a == "RUN" else a for a in argv]
    assert main(argv) == 1
    assert capsys.readouterr().err.strip() == f"fashion-cnn: error: {message}"


def test_report_out_never_replaces_the_runs_files_a_link_or_a_fifo(train_run, tmp_path, monkeypatch, capsys):
    """`report RUN --out RUN/model.safetensors` replaced the run's model with HTML (rc 0); links and FIFOs
    at OUT were replaced too, and an existing file without --force."""
    run_dir = tmp_path / "run"
    shutil.copytree(train_run, run_dir)
    monkeypatch.setattr(report, "evaluation_of", lambda *a, **k: pytest.fail("work done before the checks"))
    model = (run_dir / "model.safetensors").read_bytes()
    (tmp_path / "link.html").symlink_to(tmp_path / "elsewhere.html")
    os.mkfifo(tmp_path / "fifo.html")
    (tmp_path / "old.html").write_text("keep me")
    cases = [(run_dir / "model.safetensors", "is the input"), (run_dir / "config.json", "is the input"),
             (tmp_path / "link.html", "a symbolic link; refusing to replace it"),
             (tmp_path / "fifo.html", "not a regular file (a FIFO, device or socket); refusing to replace it")]
    for out, reason in cases:
        for force in ((), ("--force",)):
            assert main(["report", str(run_dir), "--out", str(out), *force]) == 1
            err = capsys.readouterr().err
            assert err.startswith("fashion-cnn: error: ") and err.count("\n") == 1 and reason in err, err
    assert main(["report", str(run_dir), str(train_run), "--out", str(run_dir / "metrics.csv"), "--force"]) == 1
    assert "is the input" in capsys.readouterr().err
    assert main(["report", str(run_dir), "--out", str(tmp_path / "old.html")]) == 1
    assert capsys.readouterr().err.strip().endswith("old.html: already exists; --force replaces it")
    assert (run_dir / "model.safetensors").read_bytes() == model and (tmp_path / "old.html").read_text() == "keep me"
    assert (tmp_path / "link.html").is_symlink() and stat.S_ISFIFO((tmp_path / "fifo.html").lstat().st_mode)
    (run_dir / "report.html").unlink()
    (run_dir / "report.html").symlink_to(tmp_path / "elsewhere.html")  # the default place, too
    assert main(["report", str(run_dir)]) == 1
    assert "a symbolic link" in capsys.readouterr().err and (run_dir / "report.html").is_symlink()


def test_report_force_replaces_an_existing_file(train_run, tmp_path, capsys):
    out = tmp_path / "old.html"
    out.write_text("old")
    assert main(["report", str(train_run), "--out", str(out), "--force"]) == 0
    assert out.read_text().startswith("<!doctype html>")


def test_evaluate_out_onto_an_existing_run_needs_force(train_run, real_data, tmp_path, monkeypatch, capsys):
    """`evaluate --out RUN` replaced the run's test_report.json, report.html and predictions without a word."""
    run_dir = tmp_path / "run"
    shutil.copytree(train_run, run_dir)
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    argv = ["evaluate", "--model", str(run_dir), "--data-dir", real_data.source, "--out", str(run_dir)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.strip().endswith("already exists; --force replaces it"), err
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before
    os.mkfifo(tmp_path / "fifo")
    (run_dir / "test_report.json").unlink()
    (run_dir / "test_report.json").symlink_to(tmp_path / "fifo")
    assert main(argv + ["--force"]) == 1  # never a link, even with --force
    assert "a symbolic link" in capsys.readouterr().err
    (run_dir / "test_report.json").unlink()
    assert main(argv + ["--force"]) == 0
    assert json.loads((run_dir / "test_report.json").read_text())["per_class"]
    assert (run_dir / "model.safetensors").read_bytes() == before["model.safetensors"]


def test_every_value_is_escaped_whatever_file_it_comes_from(cv_run, tmp_path, capsys):
    """A hand-edited metrics.csv put its `epoch` cell into the cv report as it was: a stored script."""
    run_dir = tmp_path / "run"
    shutil.copytree(cv_run, run_dir)
    attack = "<script>alert(1)</script>"
    lines = (run_dir / "metrics.csv").read_text().splitlines()
    head, last = lines[0].split(","), lines[-1].split(",")
    last[head.index("epoch")] = attack
    (run_dir / "metrics.csv").write_text("\n".join(lines[:-1] + [",".join(last)]) + "\n")
    assert main(["report", str(run_dir)]) == 0
    text = (run_dir / "report.html").read_text()
    assert attack not in text and f"<td>{attack.replace('<', '&lt;').replace('>', '&gt;')}</td>" in text
    assert len(page_of(run_dir).scripts) == 0  # a cv report has no gallery: no script at all


def test_markup_escapes_what_is_not_markup_already():
    cell = report.markup("<td>{}</td>", '<b title="x">&')
    assert cell == "<td>&lt;b title=&quot;x&quot;&gt;&amp;</td>" and isinstance(cell, report.Html)
    assert report.markup("<tr>{}</tr>", cell) == f"<tr>{cell}</tr>"  # markup goes in as it is, once
    assert report.table(["<h>"], [[1, cell]]) == ('<table class=""><thead><tr><th>&lt;h&gt;</th></tr></thead>'
                                                 f"<tbody><tr><td>1</td><td>{cell}</td></tr></tbody></table>")


def test_the_report_gives_intervals_and_the_model_card(train_run):
    page = page_of(train_run)
    assert page.values["accuracy-low"] <= page.values["accuracy"] <= page.values["accuracy-high"]
    assert page.values["macro-f1-low"] <= page.values["macro-f1"] <= page.values["macro-f1-high"]
    metrics = json.loads((train_run / "metrics.json").read_text())
    assert [page.values["accuracy-low"], page.values["accuracy-high"]] == metrics["test_interval"]["accuracy"]
    assert "card" in page.ids and "<td>license</td><td>MIT</td>" in (train_run / "report.html").read_text()


@pytest.mark.parametrize("fitted_on, unseen, words", [
    ("test images 1-50 of 100", slice(50, 100), "On test images 51-100 (1-50 fitted the calibration)."),
    ("validation images 1-200 of 400", slice(0, 100), "On all 100 test images (calibrated on validation images"),
    ("test images 1-5,000 of 10,000", None, "No calibration error: the calibration was fitted on test images"),
])
def test_the_calibration_error_leaves_out_the_images_calibration_was_fitted_on(fitted_on, unseen, words, train_run,
                                                                                tiny, tmp_path):
    from conftest import with_calibration

    from fashion_cnn.evaluation.calibration import expected_calibration_error, probabilities
    from fashion_cnn.evaluation.inference import predict_logits
    from fashion_cnn.jobs.evaluate import evaluate_file

    model = with_calibration(train_run / "model.safetensors", tmp_path / "m.safetensors",
                             {"temperature": 2.0, "fitted_on": fitted_on})
    out = tmp_path / "evaluation"
    evaluate_file(model, tiny, out)
    page, text = page_of(out), (out / "report.html").read_text()
    assert words in text
    if unseen is None:
        assert "ece" not in page.values
        return
    logits = predict_logits(load_model(model)[0], tiny.test_images)
    by_hand = expected_calibration_error(probabilities(logits[unseen], 2.0), tiny.test_labels[unseen])
    assert page.values["ece"] == pytest.approx(by_hand, abs=1e-6)
    compared = Page(report.write_comparison([train_run, out], out=tmp_path / "c.html").read_text())
    assert compared.values["ece-1"] == pytest.approx(by_hand, abs=1e-6)  # the comparison's ECE alike


def test_a_comparison_says_whether_the_difference_is_larger_than_the_noise(train_run, tiny, model_file, tmp_path):
    from fashion_cnn.jobs.evaluate import evaluate_file

    evaluate_file(train_run / "model.safetensors", tiny, tmp_path / "same")  # the same model: no difference
    evaluate_file(model_file, tiny, tmp_path / "untrained")  # an untrained one: about 10% against 85%
    path = report.write_comparison([train_run, tmp_path / "same", tmp_path / "untrained"], out=tmp_path / "c.html")
    page, text = Page(path.read_text()), path.read_text()
    assert page.values["mcnemar-p-1"] == 1.0
    assert "difference +0.00 points (0 images only " in text and "within the noise" in text
    assert page.values["mcnemar-p-2"] < 1e-6 and "larger than the noise" in text


@pytest.fixture(scope="module")
def sweep_run(tmp_path_factory) -> Path:
    data_dir = make_dataset_dir(tmp_path_factory.mktemp("tiny"))
    out = tmp_path_factory.mktemp("runs")
    assert main(["sweep", "--lr", "0.003", "0.03", "--folds", "1", "--val-size", "50", "--epochs", "2",
                 "--data", str(data_dir), "--out", str(out), "--device", "cpu", "--threads", "1"]) == 0
    [run] = out.iterdir()
    return run


def test_a_sweeps_report_compares_its_points_named_by_their_values_the_best_starred(sweep_run, capsys):
    assert main(["report", str(sweep_run)]) == 0
    assert capsys.readouterr().out == f"report: {sweep_run / 'report.html'}\n"
    text = (sweep_run / "report.html").read_text()
    page = Page(text)
    points = json.loads((sweep_run / "sweep_results.json").read_text())["points"]
    assert [page.values[f"cv-mean-{k}"] for k in range(2)] == [p["val_accuracy"] for p in points]
    best = max(points, key=lambda p: (p["val_accuracy"], -p["val_loss"]))["values"]["lr"]
    other = ({0.003, 0.03} - {best}).pop()
    assert f'<b>lr={best:g}</b> <span class="best"' in text and f"<b>lr={other:g}</b></td>" in text
    assert "<code>fashion-cnn sweep --epochs 2 " in text and " --lr 0.003 0.03</code>" in text
    assert "not recorded" not in text and "machine" in text


def test_the_epoch_axis_of_a_comparison_counts_whole_epochs(cv_run):
    fig = report.comparison_figure([report.load_run(cv_run)], ["cv"])  # two epochs
    fig.canvas.draw()
    for ax in fig.axes:  # the panels of curve_panels
        low, high = ax.get_xlim()
        shown = [t for t in ax.get_xticks() if low <= t <= high]
        assert len(shown) >= 2 and all(t == int(t) for t in shown), shown


def test_a_comparison_goes_in_the_folder_that_holds_the_runs(train_run, cv_run, tmp_path, monkeypatch, capsys):
    runs = tmp_path / "runs"
    shutil.copytree(train_run, runs / "a")
    shutil.copytree(cv_run, runs / "b")
    monkeypatch.chdir(runs / "a")
    assert main(["report", ".", "../b"]) == 0
    [written] = runs.glob("*-compare.html")
    assert capsys.readouterr().out == f"report: {written}\n"
    assert not list((runs / "a").glob("*-compare.html"))
    text = written.read_text()
    assert "<b>job=train" in text and "<b>job=cv, folds=3" in text  # named by what differs


def test_the_cv_report_shows_the_machine(cv_run):
    machine = json.loads((cv_run / "cv_results.json").read_text())["machine"]
    assert machine and f"<td>machine</td><td>{machine}</td>" in (cv_run / "report.html").read_text()


def test_an_image_folder_run_shows_what_preprocessing_did_and_the_emptiest_images(tmp_path):
    from sample_images import digits, png_bytes

    images, labels = digits(per_class=6, margin=0)
    for k, (image, label) in enumerate(zip(images, labels)):
        path = tmp_path / "bare" / str(label) / f"{k}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png_bytes(image if k % 3 else 255 - image))
    run_dir = cross_validate(CVConfig(folds=2, epochs=1, threads=1, out=str(tmp_path / "runs"),
                                      data=str(tmp_path / "bare"))).run_dir
    text = (run_dir / "report.html").read_text()
    assert "Preprocessing of the 60 imported images" in text
    assert re.search(r"<td>inverted \(dark on light\)</td><td>20</td>", text)
    shown = [int(n) for n in re.findall(r"<br>(\d+) object pixels</figcaption>", text)]
    assert len(shown) == report.WORST and shown == sorted(shown) and shown[0] > 0
