import pytest
import torch

from fashion_cnn.training.augment import make_augment, random_crop, random_erase, random_flip


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tagged_batch(n: int = 64) -> torch.Tensor:
    """Image i is 0 except a 10x6 block (off-centre, so flips show) of the value (i + 1) / 100."""
    x = torch.zeros(n, 1, 28, 28)
    x[:, :, 5:15, 3:9] = (torch.arange(n, dtype=torch.float) + 1).view(n, 1, 1, 1) / 100
    return x


@pytest.mark.parametrize("augment", [
    lambda x, g: random_crop(x, 3, g),
    random_flip,
    lambda x, g: random_erase(x, 1.0, g),
    make_augment(crop=2, flip=True, erase=0.5),
])
def test_shape_kept_and_each_image_stays_in_place(augment):
    x = tagged_batch()
    out = augment(x, gen())
    assert out.shape == x.shape and out.dtype == x.dtype
    for i in range(len(x)):  # image i holds only its own tag (or background): labels still match
        assert set(out[i].unique().tolist()) <= {0.0, x[i].max().item()}


def test_crop_shifts_by_at_most_pad():
    x = tagged_batch()
    out = random_crop(x, 2, gen())
    for i in range(len(x)):
        shifted = [torch.roll(x[i], (dy, dx), (1, 2)) for dy in range(-2, 3) for dx in range(-2, 3)]
        assert any(torch.equal(out[i], s) for s in shifted)  # the block never reaches the border here
    assert not torch.equal(out, x)
    assert torch.equal(random_crop(x, 0, gen()), x)


def test_flip_mirrors_about_half():
    x = tagged_batch(200)
    out = random_flip(x, gen())
    flipped = torch.tensor([torch.equal(o, f) for o, f in zip(out, x.flip(3))])
    kept = torch.tensor([torch.equal(o, i) for o, i in zip(out, x)])
    assert (flipped ^ kept).all() and 60 < flipped.sum() < 140


def test_erase_zeroes_one_box_with_probability_p():
    x = torch.ones(400, 1, 28, 28)
    out = random_erase(x, 0.5, gen())
    erased = (out == 0).flatten(1).sum(1)
    assert 140 < (erased > 0).sum() < 260
    assert erased.max() <= 0.45 * 28 * 28
    assert torch.equal(random_erase(x, 0.0, gen()), x)


def test_same_seed_same_batch():
    augment = make_augment(crop=2, flip=True, erase=0.5)
    x = tagged_batch()
    assert torch.equal(augment(x, gen(3)), augment(x, gen(3)))
    assert not torch.equal(augment(x, gen(3)), augment(x, gen(4)))
    assert make_augment() is None
