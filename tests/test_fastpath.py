import pytest
import torch
import torch.nn.functional as F

from fashion_cnn.fastpath import BaselineGrads
from fashion_cnn.models import create_model


def autograd_reference(model, x, y):
    model.zero_grad(set_to_none=True)
    logits = model(x)
    loss = F.cross_entropy(logits, y, reduction="sum")
    (loss / len(y)).backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("n", [32, 7])
def test_fast_gradients_match_autograd(n):
    torch.manual_seed(0)
    model = create_model("baseline")
    # real-looking inputs: a dark background makes max-pool ties, which must route like PyTorch's
    x = (torch.rand(n, 1, 28, 28) * (torch.rand(n, 1, 28, 28) > 0.5)).float()
    y = torch.randint(0, 10, (n,))
    ref_loss, ref_grads = autograd_reference(model, x, y)
    fast = BaselineGrads(model)
    for _ in range(2):  # the second call reuses the gradient buffers
        loss, correct = fast(x, y)
        torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
        assert correct == (model(x).argmax(1) == y).sum()
        for name, p in model.named_parameters():
            torch.testing.assert_close(p.grad, ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_fast_training_matches_autograd_over_steps():
    torch.manual_seed(1)
    ref, fast_model = create_model("baseline"), create_model("baseline")
    fast_model.load_state_dict(ref.state_dict())
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.01, momentum=0.9)
    opt_fast = torch.optim.SGD(fast_model.parameters(), lr=0.01, momentum=0.9)
    fast = BaselineGrads(fast_model)
    for _ in range(5):
        x = torch.rand(32, 1, 28, 28)
        y = torch.randint(0, 10, (32,))
        ref_loss, _ = autograd_reference(ref, x, y)
        opt_ref.step()
        loss, _ = fast(x, y)
        opt_fast.step()
        torch.testing.assert_close(loss, ref_loss, rtol=1e-4, atol=1e-4)
    for p, q in zip(ref.parameters(), fast_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
