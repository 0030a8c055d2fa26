"""The model card: built from a model file's metadata, and carried by the shipped model."""

from fashion_cnn.io import load_tensors
from fashion_cnn.models.card import model_card
from fashion_cnn.models.locate import resolve_model_path


def test_the_shipped_model_carries_a_card_whose_figures_are_its_own():
    _, meta = load_tensors(resolve_model_path(None))
    card = meta["model_card"]
    low, high = card["accuracy"]["interval"]
    assert card["accuracy"]["test"] == meta["test_accuracy"] and low < meta["test_accuracy"] < high
    assert [low, high] == meta["test_interval"]["accuracy"] and card["accuracy"]["level"] == 0.95
    assert card["calibration"]["temperature"] == meta["calibration"]["temperature"]
    # calibrated on training images held out of its training, and the card says which and how many
    assert card["calibration"]["fitted_on"] == meta["calibration"]["fitted_on"] == "validation images 1-2,500 of 5,000"
    assert card["evaluation"] == "the test images were read once, after training, for the accuracy below"
    assert "test items" not in card["limits"] and card["license"] == "MIT"
    assert card["data"].endswith(": 55,000 training images and 5,000 more held out for validation, "
                                 "10,000 test images")
    assert card == model_card(meta, card["limits"])  # nothing in it that its metadata does not say


def test_a_card_from_untrusted_metadata_is_built_without_failing():
    card = model_card({"config": "x", "data": [1], "calibration": {"unknown": 3, "fitted_on": "test images"},
                       "test_interval": 5, "training_images": "many"})
    assert card["data"] == "not recorded: its training images" and card["accuracy"]["interval"] is None
    assert card["calibration"]["fitted_on"] == "test images" and "are not unseen" in card["evaluation"]
