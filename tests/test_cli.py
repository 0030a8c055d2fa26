import json
import subprocess
import sys
from pathlib import Path

import pytest

from fashion_cnn.cli import main


def test_help_lists_commands_and_options():
    out = subprocess.run([sys.executable, "-m", "fashion_cnn.cli", "cv", "--help"],
                         capture_output=True, text=True, check=True).stdout
    for option in ("--folds", "--epochs", "--batch-size", "--lr", "--seed", "--device", "--limit",
                   "--out", "--resume", "--data-dir"):
        assert option in out
    assert "the tutorial's 32" in out


def test_short_cli_run_on_real_data(real_data, tmp_path, capsys):
    out = str(tmp_path / "runs")
    args = ["--limit", "1000", "--epochs", "1", "--out", out, "--data-dir", real_data.source]
    assert main(["cv", "--folds", "2", *args]) == 0
    assert main(["train", *args]) == 0
    cv_dir, train_dir = sorted((tmp_path / "runs").iterdir())
    assert cv_dir.name.endswith("-cv") and train_dir.name.endswith("-train")
    assert (cv_dir / "learning_curves.png").stat().st_size > 10_000
    assert len(json.loads((cv_dir / "cv_results.json").read_text())["fold_accuracies"]) == 2
    assert (train_dir / "model.safetensors").is_file()
    captured = capsys.readouterr()
    assert "fold 2/2: accuracy" in captured.err and "accuracy: mean" in captured.err

    assert main(["evaluate", "--model", str(train_dir), "--data-dir", real_data.source]) == 0
    accuracy = json.loads((train_dir / "metrics.json").read_text())["test_accuracy"]
    assert f"test accuracy: {100 * accuracy:.2f}%" in capsys.readouterr().out


def test_data_command(real_data, tmp_path, capsys):
    assert main(["data", "--data-dir", real_data.source, "--samples", str(tmp_path / "s.png")]) == 0
    out = capsys.readouterr().out
    assert "Ankle boot" in out and "6000" in out and (tmp_path / "s.png").is_file()


@pytest.mark.parametrize("argv, message", [
    (["data", "--data-dir", "/nonexistent"], "lacks train-images"),
    (["evaluate", "--model", "/nonexistent/model.safetensors"], "no such file"),
    (["cv", "--model", "nope", "--limit", "100"], "unknown model 'nope'"),
    (["cv", "--threads", "-2", "--limit", "100"], "--threads must be 0"),
])
def test_errors_are_one_line_with_nonzero_exit(argv, message, tmp_path, capsys, real_data):
    assert main([*argv, "--out", str(tmp_path)] if argv[0] == "cv" else argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("fashion-cnn: error:") and message in err[-1]


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
