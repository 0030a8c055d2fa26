import torch

from fashion_cnn.models import count_parameters, create_model


def test_baseline_shape_and_parameter_count():
    model = create_model("baseline")
    assert model(torch.rand(4, 1, 28, 28)).shape == (4, 10)
    assert count_parameters(model) == 542_230  # 320 + 540,900 + 1,010, as the tutorial's summary


def test_baseline_he_uniform_init():
    torch.manual_seed(0)
    model = create_model("baseline")
    for layer, fan_in in ((model.conv, 9), (model.fc1, 5408)):
        bound = (6 / fan_in) ** 0.5
        assert layer.weight.abs().max() <= bound and layer.weight.abs().max() > 0.95 * bound
        assert torch.all(layer.bias == 0)
