import json
import subprocess
import sys

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
    out = capsys.readouterr().out
    assert out.startswith(f"model: {train_dir / 'model.safetensors'} (baseline, test accuracy")
    assert f"test accuracy: {100 * accuracy:.2f}%" in out


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
