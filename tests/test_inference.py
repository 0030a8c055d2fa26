"""predict_logits: every caller's images go through one dtype rule (uint8 scaled, float in [0, 1])."""

import pytest
import torch

from fashion_cnn.data.images import to_float
from fashion_cnn.evaluation.inference import predict_logits
from fashion_cnn.models.registry import create_model


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("baseline")


def test_uint8_and_float_in_either_shape_give_the_same_logits(model):
    images = torch.randint(0, 256, (6, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    expected = predict_logits(model, images)
    scaled = to_float(images)
    for x in (images[:, None], scaled, scaled[:, 0], scaled.double()):
        torch.testing.assert_close(predict_logits(model, x, batch_size=4), expected, rtol=1e-4, atol=1e-4)
    assert predict_logits(model, scaled.half()).shape == expected.shape  # float16 too (rounded input)


@pytest.mark.parametrize("images, reason", [
    (torch.full((3, 1, 28, 28), 255.0), "values from 255 to 255"),
    (torch.full((3, 28, 28), -1.0), "values from -1"),
    (torch.full((3, 28, 28), float("nan")), "NaN"),
    (torch.zeros(3, 28, 28, dtype=torch.int64), "int64"),
    (torch.zeros(3, 3, 28, 28), r"shape \(3, 3, 28, 28\)"),
    (torch.zeros(28, 28), r"shape \(28, 28\)"),
])
def test_anything_else_is_refused_clearly(model, images, reason):
    with pytest.raises(ValueError, match=reason):
        predict_logits(model, images)
