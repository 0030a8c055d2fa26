import logging

import pytest
import torch
import torch.nn.functional as F

from fashion_cnn.models import fastpath
from fashion_cnn.models.registry import BUILDERS, create_model
from fashion_cnn.models.specs import list_models


def batch(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # half the pixels black, as in Fashion-MNIST: max-pool windows then tie, and ties must route
    # their gradient to the same element as PyTorch's max_pool2d does
    x = torch.rand(n, 1, 28, 28, generator=g) * (torch.rand(n, 1, 28, 28, generator=g) > 0.5)
    return x, torch.randint(0, 10, (n,), generator=g)


def twin_models(lr=0.01, momentum=0.9):
    torch.manual_seed(0)
    reference, fast = create_model("baseline"), create_model("baseline")
    fast.load_state_dict(reference.state_dict())
    opt_ref = torch.optim.SGD(reference.parameters(), lr=lr, momentum=momentum)
    opt_fast = torch.optim.SGD(fast.parameters(), lr=lr, momentum=momentum)
    return reference, opt_ref, fast, opt_fast


def reference_step(model, optimizer, x, y):
    """Plain PyTorch: autograd through the nn.Module, then torch.optim.SGD."""
    optimizer.zero_grad()
    logits = model(x)
    loss = F.cross_entropy(logits, y, reduction="sum")
    (loss / len(y)).backward()
    optimizer.step()
    return loss.detach(), (logits.argmax(1) == y).sum()


@pytest.mark.parametrize("n", [32, 7, 1])  # 1: a last batch of one image, where views alias easily
def test_first_step_gradients_match_autograd(n, stage):
    reference, opt_ref, fast, opt_fast = twin_models()
    x, y = batch(n, seed=n)
    ref_loss, ref_correct = reference_step(reference, opt_ref, x, y)
    loss, correct = fastpath.BaselineSGDStep(fast, opt_fast)(x, y)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    assert correct == ref_correct
    # from zero momentum, the buffer after one step is the gradient itself
    for (name, p), q in zip(reference.named_parameters(), fast.parameters()):
        torch.testing.assert_close(opt_fast.state[q]["momentum_buffer"], p.grad, rtol=1e-4, atol=1e-6,
                                   msg=name)


def test_class_weighted_step_matches_autograd(stage):
    """--class-weights auto: the fast step takes the weighted mean loss, as F.cross_entropy(weight=...)."""
    reference, opt_ref, fast, opt_fast = twin_models()
    weights = torch.linspace(0.2, 3.0, 10)
    x, y = batch(32, seed=11)
    logits = reference(x)
    ref_loss = F.cross_entropy(logits, y, weight=weights)
    ref_loss.backward()
    opt_ref.step()
    loss, _ = fastpath.fast_step(fast, opt_fast, class_weights=weights)(x, y)
    torch.testing.assert_close(loss, ref_loss.detach() * len(y), rtol=1e-5, atol=1e-5)
    unweighted = F.cross_entropy(logits, y).detach() * len(y)
    assert abs(loss - unweighted) > 1e-3  # the weights changed the loss
    for (name, p), q in zip(reference.named_parameters(), fast.parameters()):
        torch.testing.assert_close(opt_fast.state[q]["momentum_buffer"], p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_training_matches_autograd_and_sgd_over_steps(stage):
    reference, opt_ref, fast, opt_fast = twin_models()
    step = fastpath.BaselineSGDStep(fast, opt_fast)
    for i in range(6):
        x, y = batch(32, seed=100 + i)
        if i == 3:  # a schedule changes the learning rate between steps
            for opt in (opt_ref, opt_fast):
                opt.param_groups[0]["lr"] = 0.005
        ref_loss, _ = reference_step(reference, opt_ref, x, y)
        loss, _ = step(x, y)
        torch.testing.assert_close(loss, ref_loss, rtol=1e-4, atol=1e-4)
    for (name, p), q in zip(reference.named_parameters(), fast.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-6, msg=name)
        torch.testing.assert_close(opt_fast.state[q]["momentum_buffer"],
                                   opt_ref.state[p]["momentum_buffer"], rtol=1e-3, atol=1e-5, msg=name)


def test_fast_step_only_where_it_computes_the_same_update():
    model = create_model("baseline")
    assert fastpath.supports(model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9))
    for other in (torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True),
                  torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4),
                  torch.optim.AdamW(model.parameters())):
        assert not fastpath.supports(model, other)
    # a frozen backbone's optimizer holds the head alone: the step that updates all six tensors steps aside
    assert not fastpath.supports(model, torch.optim.SGD(model.fc2.parameters(), lr=0.01, momentum=0.9))
    assert fastpath.fast_step(model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9),
                              label_smoothing=0.1) is None
    # the registry's specs choose the fast paths: only the baseline names them
    assert [name for name in list_models() if BUILDERS[name].fast_step] == ["baseline"]
    assert [name for name in list_models() if BUILDERS[name].fast_logits] == ["baseline"]


def test_fast_inference_matches_module(stage):
    torch.manual_seed(0)
    model = create_model("baseline").eval()
    x, _ = batch(50, seed=3)
    with torch.no_grad():
        expected = model(x)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for chunk in (256, 16, 7):  # one chunk, and several with a remainder (of one image, for 7)
        torch.testing.assert_close(fastpath.baseline_logits(model, x, chunk), expected, rtol=1e-5, atol=1e-5)
    for name, value in model.state_dict().items():  # inference leaves the model as it was
        assert torch.equal(value, before[name]), name


def test_predict_logits_keeps_test_time_augmentation():
    from fashion_cnn.evaluation.inference import predict_logits

    torch.manual_seed(0)
    model = create_model("baseline").eval()
    x, _ = batch(20, seed=4)
    plain = predict_logits(model, x)
    model.tta = True
    with torch.no_grad():
        mirrored = (model.logits(x) + model.logits(x.flip(3))) / 2
    torch.testing.assert_close(predict_logits(model, x), mirrored, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(plain, mirrored)


def test_native_build_is_cached_and_falls_back_without_a_compiler(tmp_path, monkeypatch, caplog):
    build = fastpath.native_library.__wrapped__  # uncached: the test controls the cache and the compiler
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", "false")  # a compiler that always fails
    with caplog.at_level(logging.WARNING, logger="fashion_cnn"):
        assert build() is None
    assert "C kernel is unavailable" in caplog.text
    assert not list((tmp_path / "cache").rglob("*.so")) and not list((tmp_path / "cache").rglob("*.tmp"))

    monkeypatch.setenv("CC", "cc")
    assert build() is not None
    [built] = (tmp_path / "cache").rglob("*.so")
    stamp = built.stat().st_mtime_ns
    assert build() is not None and built.stat().st_mtime_ns == stamp  # reused, not rebuilt
    monkeypatch.setenv("FASHION_CNN_NATIVE", "0")
    assert build() is None


def test_native_kernel_gives_the_same_bits_on_any_number_of_threads(threads):
    lib = fastpath.native_library()
    assert lib is not None
    conv = create_model("baseline").conv
    x, _ = batch(19, seed=5)  # pieces of 8 images: 8, 8 and 3
    gh = torch.randn(19, 5408, generator=torch.Generator().manual_seed(6))

    def run(n_threads):
        threads(n_threads)
        stage = fastpath.NativeConvPool(lib)
        return (stage.forward(x, conv), *stage.backward(gh))

    one = run(1)
    for n_threads in (1, 2, 3, 4):  # 3 threads: uneven shares of the pieces
        for a, b in zip(one, run(n_threads)):
            assert torch.equal(a, b), n_threads


def train_steps(thread_counts: list[int], threads) -> tuple[list[torch.Tensor], bool]:
    """Weights and momentum buffers after one step per entry of thread_counts, each step on that many
    threads (the last batch of 7 images, as an epoch's last batch can be); and whether the step said
    its bits do not depend on the thread count."""
    reference, opt_ref, fast, opt_fast = twin_models()
    step = fastpath.BaselineSGDStep(fast, opt_fast)
    for i, n_threads in enumerate(thread_counts):
        threads(n_threads)
        step(*batch(32 if i < len(thread_counts) - 1 else 7, seed=200 + i))
    state = [p.detach().clone() for p in fast.parameters()]
    return state + [opt_fast.state[p]["momentum_buffer"].clone() for p in fast.parameters()], step.thread_invariant


def test_step_gives_the_same_bits_on_any_number_of_threads(stage, threads):
    """machine.adapt_threads changes the thread count with the load, between any two steps of a run;
    with the C kernel the step's results must not depend on it. (torch's products split the work by the
    thread count: the fallback step says so, and the thread count is then never changed.)"""
    fixed, invariant = train_steps([1] * 6, threads)
    assert invariant == (stage == "native" and fastpath.mkl_functions() is not None)
    if not invariant:
        return
    for counts in ([2] * 6, [3] * 6, [1, 2, 3, 2, 1, 2]):
        changed, _ = train_steps(counts, threads)
        for a, b in zip(fixed, changed):
            assert torch.equal(a, b), counts


def native_dense() -> fastpath.NativeDense:
    """The blocked products, where this build of torch has MKL (x86); skips the test elsewhere."""
    lib = fastpath.native_library()
    assert lib is not None, "conv_pool.c did not build: is a C compiler (cc) installed?"
    if fastpath.mkl_functions() is None:
        pytest.skip("torch has no MKL here: the step uses torch's products and keeps its thread count")
    return fastpath.NativeDense(lib, *fastpath.mkl_functions())


def test_native_inference_gives_the_same_bits_on_any_number_of_threads(threads):
    native_dense()
    torch.manual_seed(0)
    model = create_model("baseline").eval()
    x, _ = batch(300, seed=7)
    threads(1)
    one = [fastpath.baseline_logits(model, x, chunk) for chunk in (256, 16)]
    for n_threads in (2, 3):
        threads(n_threads)
        for chunk, expected in zip((256, 16), one):
            assert torch.equal(fastpath.baseline_logits(model, x, chunk), expected), (n_threads, chunk)


@pytest.mark.parametrize("rows, inner, cols", [(32, 5408, 100), (32, 100, 5408), (100, 32, 5408), (7, 100, 10),
                                               (1, 5408, 100), (256, 5408, 100)])
def test_blocked_products_compute_torchs_products(rows, inner, cols, threads):
    """NativeDense: out = beta * out + x @ y, cut into blocks along whichever dimension is largest, for the
    layouts the step uses (transposed views included)."""
    dense = native_dense()
    g = torch.Generator().manual_seed(rows + inner + cols)
    x, y = torch.randn(rows, inner, generator=g), torch.randn(inner, cols, generator=g)
    out = torch.randn(rows, cols, generator=g)
    threads(2)
    for a, b in ((x, y), (x.t().contiguous().t(), y), (x, y.t().contiguous().t())):
        torch.testing.assert_close(dense.mm(a, b), x @ y, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(dense.mm(a, b, out.clone(), beta=0.9), 0.9 * out + x @ y, rtol=1e-4, atol=1e-4)
