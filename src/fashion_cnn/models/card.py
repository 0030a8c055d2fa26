"""A model card: what a model file says about itself in words an expert checks first (Mitchell et al.
(2019), "Model Cards for Model Reporting"): its data, its recipe, how it was evaluated and on what, its
accuracy with a 95% interval, its calibration and what that was fitted on, its known limits, its license.

`model_card(meta)` builds it from the metadata `train` writes (the card repeats those figures, so a reader
of the card alone has them); it is stored in the model file under "model_card", and built again where the
metadata changes (`calibrate`).
"""

from __future__ import annotations

LICENSE = "MIT"  # the package's (pyproject.toml), weights included
NOT_MEASURED = ("not measured for this model beyond its test set: its report's confusion matrix and highest-loss "
                "examples show where it fails")


def model_card(meta: dict, limits: str = NOT_MEASURED) -> dict:
    """The card of a model whose metadata is `meta` (what train_final writes, calibration included)."""
    config, interval = mapping(meta.get("config")), mapping(meta.get("test_interval"))
    val_size, train_images, test_images = (count(x) for x in (config.get("val_size"), meta.get("training_images"),
                                                               meta.get("test_images")))
    data = mapping(meta.get("data")).get("source", "not recorded")
    return {
        "data": f"{data}: " + (f"{train_images:,} training images" if train_images else "its training images")
                + (f" and {val_size:,} more held out for validation" if val_size else "")
                + (f", {test_images:,} test images" if test_images else ""),
        "recipe": config,
        "training": {"seconds": meta.get("train_seconds"), "machine": meta.get("machine"),
                     "fashion_cnn_version": meta.get("version")},
        "evaluation": "the test images were read once, after training, for the accuracy below"
                      + calibration_protocol(mapping(meta.get("calibration"))),
        "accuracy": {"test": meta.get("test_accuracy"), "interval": interval.get("accuracy"),
                     "macro_f1": meta.get("test_macro_f1"), "macro_f1_interval": interval.get("macro_f1"),
                     "level": interval.get("level"),
                     "method": f"percentile bootstrap over the test images, {interval.get('resamples')} "
                               f"resamples, seed {interval.get('seed')}" if interval else None},
        "calibration": calibration_card(mapping(meta.get("calibration"))),
        "limits": limits,
        "license": LICENSE,
    }


def mapping(value: object) -> dict:
    """A metadata value that should be a JSON object, or {} (a model file is untrusted)."""
    return value if isinstance(value, dict) else {}


def count(value: object) -> int:
    """A metadata value that should be a count of images, or 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def calibration_protocol(calibration: dict) -> str:
    """What the evaluation protocol adds for the calibration: where it fitted on test images, that."""
    fitted_on = calibration.get("fitted_on", "")
    if "test images" not in str(fitted_on):
        return ""
    return (f"; but the temperature and the threshold for unknown were fitted on {fitted_on}, so those images "
            "are not unseen for them: calibration figures come from the other test images only")


def calibration_card(calibration: dict) -> dict:
    """Temperature, unknown rule and rate, and the images each was fitted and measured on."""
    if not calibration:
        return {"temperature": 1.0, "fitted_on": None,
                "note": "not calibrated (train with --val-size to calibrate): probabilities as the softmax "
                        "gives them, never unknown unless asked"}
    unknown = mapping(calibration.get("unknown"))
    return {"temperature": calibration.get("temperature"), "fitted_on": calibration.get("fitted_on"),
            "reported_on": calibration.get("reported_on"), "ece_before": calibration.get("ece_before"),
            "ece_after": calibration.get("ece_after"),
            "unknown_rate_target": unknown.get("target_rate"), "unknown_rate_reported": unknown.get("rate_reported"),
            **({"note": calibration["note"]} if calibration.get("note") else {})}
