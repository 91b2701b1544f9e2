import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from reslab.data.augment import crop_flip_draws, subtract_mean, subtract_mean_crop_flip

H = W = 8
PAD = 4


def _pattern(n: int) -> torch.Tensor:
    """n copies of an image whose pixel (r, c) holds 1 + r*W + c: every value names its pixel."""
    return (1 + torch.arange(H * W, dtype=torch.int64).reshape(1, 1, H, W)).repeat(n, 2, 1, 1)


def crop_flip(
    images: torch.Tensor, padding: int = PAD, flip: bool = True, generator=None
) -> torch.Tensor:
    """The crop and flip alone: subtract_mean_crop_flip with a zero mean and scale 1."""
    zero = torch.zeros(images.shape[1:])
    return subtract_mean_crop_flip(
        images, zero, padding, flip, seeded(generator, images, padding, flip), scale=1.0
    )


def seeded(generator, images: torch.Tensor, padding: int = PAD, flip: bool = True):
    """``generator``'s draws for ``images`` (one randint each), or None without one."""
    if generator is None:
        return None
    choices = (2 * padding + 1) ** 2 * (2 if flip else 1)
    return torch.randint(0, choices, (len(images),), generator=generator)


def _expected(top: int, left: int, flip: bool) -> torch.Tensor:
    padded = torch.nn.functional.pad(_pattern(1)[0, 0], (PAD, PAD, PAD, PAD))
    crop = padded[top : top + H, left : left + W]
    return crop.flip(1) if flip else crop


OFFSETS = range(2 * PAD + 1)
CANDIDATES = {
    (t, left, f): _expected(t, left, f) for t in OFFSETS for left in OFFSETS for f in (0, 1)
}


def _recover(out: torch.Tensor) -> list[tuple[int, int, int]]:
    """For each augmented image, the (top, left, flip) that produced it; exactly one must match."""
    found = []
    for img in out.long():
        assert torch.equal(img[0], img[1]), "both channels get the same crop"
        matches = [key for key, ref in CANDIDATES.items() if torch.equal(img[0], ref)]
        assert len(matches) == 1, f"augmented image matches {len(matches)} crops"
        found.append(matches[0])
    return found


def test_shape_is_kept_and_the_result_is_float32() -> None:
    for dtype in (torch.uint8, torch.float32):
        x = torch.zeros(5, 3, 32, 32, dtype=dtype)
        y = crop_flip(x, 4)
        assert y.shape == x.shape and y.dtype == torch.float32


def test_every_output_is_a_padded_crop_possibly_mirrored() -> None:
    torch.manual_seed(0)
    found = _recover(crop_flip(_pattern(64), PAD))
    assert len(found) == 64


def test_offsets_and_flips_vary_per_image_and_cover_the_range() -> None:
    torch.manual_seed(1)
    found = _recover(crop_flip(_pattern(1500), PAD))
    tops = {t for t, _, _ in found}
    lefts = {left for _, left, _ in found}
    assert tops == set(range(2 * PAD + 1)) and lefts == set(range(2 * PAD + 1))
    flip_rate = sum(f for _, _, f in found) / len(found)
    assert 0.45 < flip_rate < 0.55
    # independent per image: each of the 162 crops is about equally likely
    counts = torch.bincount(
        torch.tensor([t * 18 + left * 2 + f for t, left, f in found]), minlength=162
    )
    assert counts.min() > 0 and counts.max() < 30


def test_padding_is_zeros() -> None:
    torch.manual_seed(2)
    out = crop_flip(_pattern(300), PAD)
    for img, (top, left, _) in zip(out, _recover(out), strict=True):
        inside_rows = min(top + H, PAD + H) - max(top, PAD)
        inside_cols = min(left + W, PAD + W) - max(left, PAD)
        assert torch.count_nonzero(img[0]) == inside_rows * inside_cols
    assert (out == 0).any()


def test_no_flip_and_no_padding() -> None:
    x = _pattern(20)
    assert torch.equal(crop_flip(x, padding=0, flip=False), x.float())
    torch.manual_seed(3)
    assert all(f == 0 for _, _, f in _recover(crop_flip(x, PAD, flip=False)))


def test_generator_makes_it_repeatable() -> None:
    x = _pattern(50)
    a = crop_flip(x, PAD, generator=torch.Generator().manual_seed(7))
    b = crop_flip(x, PAD, generator=torch.Generator().manual_seed(7))
    c = crop_flip(x, PAD, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_subtract_mean() -> None:
    x = torch.full((2, 1, 2, 2), 200, dtype=torch.uint8)
    mean = torch.full((1, 2, 2), 100.0)
    assert torch.allclose(subtract_mean(x, mean), torch.full((2, 1, 2, 2), 100 / 255))


def _per_image(images: torch.Tensor, padding: int, flip: bool, seed: int) -> torch.Tensor:
    """The augmentation written out image by image: one draw per image, in order,
    ``randint(0, (2p+1)² · 2)`` (without the flip: (2p+1)²), whose lowest bit is the flip and
    whose rest is (top, left); then for each image a slice of its zero-padded self at
    (top, left), mirrored when drawn so."""
    g = torch.Generator().manual_seed(seed)
    n, _, h, w = images.shape
    side = 2 * padding + 1
    draws = torch.randint(0, side * side * (2 if flip else 1), (n,), generator=g).tolist()
    crops = []
    for image, v in zip(images, draws, strict=True):
        m = flip and v % 2 == 1
        v = v // 2 if flip else v
        t, lft = divmod(v, side)
        crop = F.pad(image, (padding,) * 4)[:, t : t + h, lft : lft + w]
        crops.append(crop.flip(2) if m else crop)
    return torch.stack(crops)


@pytest.mark.parametrize("padding", [0, 1, 4])
@pytest.mark.parametrize("flip", [True, False])
def test_equals_the_per_image_reference_for_a_fixed_generator(padding: int, flip: bool) -> None:
    """Bit for bit, with non-square images (rows and columns cannot be swapped unnoticed)."""
    images = torch.randint(0, 256, (40, 3, 6, 9), dtype=torch.uint8)
    mean = images.float().mean(0)
    centred = subtract_mean(images, mean)
    for seed in range(3):
        expected = _per_image(images, padding, flip, seed)
        got = crop_flip(images, padding, flip, torch.Generator().manual_seed(seed))
        assert torch.equal(got, expected.float())
        expected = _per_image(centred, padding, flip, seed)  # padded after the mean subtraction
        g = torch.Generator().manual_seed(seed)
        fused = subtract_mean_crop_flip(
            images, mean, padding, flip, seeded(g, images, padding, flip)
        )
        assert fused.dtype == torch.float32
        assert torch.equal(fused.view(torch.int32), expected.view(torch.int32))


@pytest.mark.parametrize(
    ("dtype", "mean_dtype"),
    [(torch.uint8, torch.float32), (torch.uint8, torch.float64), (torch.float64, torch.float32),
     (torch.int64, torch.float64)],
)  # fmt: skip
def test_fused_is_subtract_mean_then_the_per_image_crop_and_flip(
    dtype: torch.dtype, mean_dtype: torch.dtype
) -> None:
    images = (torch.rand(64, 3, 32, 32, dtype=torch.float64) * 255).to(dtype)
    mean = images.double().mean(0).to(mean_dtype)
    for scale in (255.0, 1.0, 3.5):
        a = _per_image(subtract_mean(images, mean, scale), PAD, True, 5)
        draws = seeded(torch.Generator().manual_seed(5), images)
        b = subtract_mean_crop_flip(images, mean, scale=scale, draws=draws)
        assert a.dtype == b.dtype and torch.equal(a, b)
    assert torch.equal(
        subtract_mean_crop_flip(images, mean, padding=0, flip=False), subtract_mean(images, mean)
    )


def test_fused_refuses_bad_input() -> None:
    mean = torch.zeros(3, 32, 32)
    with pytest.raises(ValueError, match="expected a batch of shape"):
        subtract_mean_crop_flip(torch.zeros(3, 32, 32), mean)
    with pytest.raises(ValueError, match="padding must be >= 0"):
        subtract_mean_crop_flip(torch.zeros(1, 3, 32, 32), mean, padding=-1)
    with pytest.raises(ValueError, match="scale must be > 0"):
        subtract_mean_crop_flip(torch.zeros(1, 3, 32, 32), mean, scale=0.0)


def test_fused_returns_new_tensors_and_stays_exact_call_after_call() -> None:
    """On the CPU the fused path keeps its padded buffer between calls: results must not alias
    it, and its zero border must survive batches of other shapes and inference mode."""
    mean = torch.rand(3, 32, 32) * 255
    batches = [torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8) for n in (16, 16, 5, 16)]
    results = []
    for seed, images in enumerate(batches):
        mode = torch.inference_mode() if seed == 2 else torch.enable_grad()
        with mode:
            draws = seeded(torch.Generator().manual_seed(seed), images)
            got = subtract_mean_crop_flip(images, mean, draws=draws)
        expected = _per_image(subtract_mean(images, mean), PAD, True, seed)
        assert torch.equal(got, expected)
        results.append((got, expected))
    for got, expected in results:  # later calls did not overwrite earlier results
        assert torch.equal(got, expected)


def test_one_batch_of_k_batches_draws_as_the_k_batches_in_turn() -> None:
    """What fused iterations rely on: augmenting K batches at once gives, image for image,
    what augmenting them one after the other gives, with training's draws (and from torch's
    global generator)."""
    images = torch.randint(0, 256, (6 * 8, 3, 5, 7), dtype=torch.uint8)
    mean, places = images.float().mean(0), torch.arange(8)
    draws = crop_flip_draws(4, 10, 6, places, 2).flatten()
    together = subtract_mean_crop_flip(images, mean, 2, True, draws)
    in_turn = torch.cat([
        subtract_mean_crop_flip(b, mean, 2, True, crop_flip_draws(4, 10 + i, 1, places, 2)[0])
        for i, b in enumerate(images.split(8))
    ])  # fmt: skip
    assert torch.equal(together, in_turn)
    torch.manual_seed(5)
    together = subtract_mean_crop_flip(images, mean)
    torch.manual_seed(5)
    in_turn = torch.cat([subtract_mean_crop_flip(b, mean) for b in images.split(8)])
    assert torch.equal(together, in_turn)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1), iteration=st.integers(0, 10**7), k=st.integers(1, 4),
    per_rank=st.integers(1, 16), world=st.integers(1, 8), padding=st.integers(0, 4),
)  # fmt: skip
def test_training_draws_do_not_depend_on_how_the_global_batch_is_split(
    seed: int, iteration: int, k: int, per_rank: int, world: int, padding: int
) -> None:
    """N ranks holding places r, r + N, ... of each global batch draw what one process draws
    for the whole batch, and K fused iterations what the K iterations draw in turn."""
    whole = crop_flip_draws(seed, iteration, k, torch.arange(per_rank * world), padding)
    assert whole.shape == (k, per_rank * world)
    assert int(whole.min()) >= 0 and int(whole.max()) < (2 * padding + 1) ** 2 * 2
    for rank in range(world):
        mine = crop_flip_draws(
            seed, iteration, k, torch.arange(rank, per_rank * world, world), padding
        )
        assert torch.equal(mine, whole[:, rank::world])
    for j in range(k):
        alone = crop_flip_draws(seed, iteration + j, 1, torch.arange(per_rank * world), padding)
        assert torch.equal(alone[0], whole[j])


def test_training_draws_differ_between_places_iterations_and_seeds() -> None:
    """Independent draws: two ranks' halves of a batch, two iterations and two seeds differ,
    and each of the 162 crops is about equally likely at every place of the batch."""
    places = torch.arange(128)
    first = crop_flip_draws(0, 0, 1, places)[0]
    assert not torch.equal(first[0::2], first[1::2])  # rank 0's and rank 1's
    assert not torch.equal(first, crop_flip_draws(0, 1, 1, places)[0])
    assert not torch.equal(first, crop_flip_draws(1, 0, 1, places)[0])
    counts = torch.bincount(crop_flip_draws(0, 0, 4000, places).flatten(), minlength=162)
    expected = 4000 * 128 / 162
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 230  # the 99.9% quantile of chi-square with 161 degrees of freedom: 219.6...
    for place in (0, 1, 127):  # each place over the iterations, too
        alone = torch.bincount(
            crop_flip_draws(0, 0, 16200, places[place : place + 1]).flatten(), minlength=162
        )
        assert int(alone.min()) > 50 and int(alone.max()) < 155


def test_draws_of_the_wrong_shape_are_refused() -> None:
    with pytest.raises(ValueError, match="expected 2 draws, one per image"):
        subtract_mean_crop_flip(
            torch.zeros(2, 3, 8, 8), torch.zeros(3, 8, 8), draws=torch.zeros(3, dtype=torch.int64)
        )
