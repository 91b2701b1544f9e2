"""ImageNet from tiny JPEG trees in the standard layout: data_dir/{train,val}/<class>/*.JPEG."""

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from hydra.utils import instantiate
from PIL import Image

from reslab.data import ImageNetDataModule
from reslab.data.imagenet import (
    CHANNEL_MEAN,
    CHANNEL_STD,
    PCA_EIGVAL,
    PCA_EIGVEC,
    EvalShard,
    TrainOrder,
)

CLASSES = ("n01440764", "n01443537", "n01484850")
SIZES = ((40, 56), (60, 44))  # (height, width), alternating
TINY = {"crop_size": 32, "scale": (36, 48), "eval_resize": 36, "num_workers": 0}


def write_jpeg(path: Path, pixels: np.ndarray, mode: str = "RGB") -> None:
    """``pixels`` (H, W, 3) uint8 as a JPEG file, without chroma subsampling."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).convert(mode).save(path, format="JPEG", quality=100, subsampling=0)


def gradient(h: int, w: int, step: int = 4) -> np.ndarray:
    """Red grows by ``step`` per column, green per row, blue is 128: every pixel is unique."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * step, y * step, np.full_like(x, 128)], -1).clip(0, 255).astype(np.uint8)


def make_tree(
    root: Path, n_train: int = 4, n_val: int = 2, pattern: str = "solid", seed: int = 0
) -> dict[str, tuple[int, int, int]]:
    """``root/{train,val}/<class>/*.JPEG`` for ``CLASSES``; returns each file's solid colour
    (path relative to ``root``) when ``pattern`` is "solid", else writes gradients."""
    rng = np.random.default_rng(seed)
    colours = {}
    for split, n in (("train", n_train), ("val", n_val)):
        for c in CLASSES:
            for i in range(n):
                h, w = SIZES[i % 2]
                name = f"{split}/{c}/{c}_{i}.JPEG"
                if pattern == "solid":
                    colour = tuple(int(v) for v in rng.integers(0, 256, 3))
                    colours[name] = colour
                    write_jpeg(root / name, np.full((h, w, 3), colour, dtype=np.uint8))
                else:
                    write_jpeg(root / name, gradient(h, w))
    return colours


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, dict[str, tuple[int, int, int]]]:
    root = tmp_path / "imagenet"
    return root, make_tree(root)


def module(root: Path, **kwargs) -> ImageNetDataModule:
    dm = ImageNetDataModule(root, **{**TINY, **kwargs})
    dm.setup("fit")
    return dm


def trainer(**kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, **kwargs,
    )  # fmt: skip


# --- folders and classes -----------------------------------------------------------------------


def test_classes_labels_and_attributes(tree) -> None:
    root, _ = tree
    assert (ImageNetDataModule.num_classes, ImageNetDataModule.image_size) == (1000, 224)
    dm = module(root)
    assert (dm.name, dm.in_channels, dm.num_classes, dm.image_size) == ("imagenet", 3, 3, 32)
    assert dm.classes == list(CLASSES) and dm.has_val
    assert len(dm.train_images) == 12 and len(dm.val_images) == len(dm.test_images) == 6
    for i in range(12):
        folder = dm.train_images.path(i).parent.name
        assert CLASSES.index(folder) == dm.train_images.labels[i]
    assert dm.train_images.path(0) == root / "train" / CLASSES[0] / f"{CLASSES[0]}_0.JPEG"
    dm.setup("test")  # idempotent
    assert len(dm.train_images) == 12


def test_train_batches(tree) -> None:
    dm = module(tree[0], batch_size=5)
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(batches) == 2  # 12 images, the last partial batch dropped
    images, labels, alpha = batches[0]  # alpha: each image's colour noise
    assert images.shape == (5, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.dtype == torch.int64 and labels.max() <= 2
    assert alpha.shape == (5, 3) and alpha.dtype == torch.float32
    assert not loader.persistent_workers  # num_workers=0
    first = torch.cat([b[1] for b in dm.train_dataloader()])
    again = torch.cat([b[1] for b in module(tree[0], batch_size=5).train_dataloader()])
    other = torch.cat([b[1] for b in module(tree[0], batch_size=5, seed=1).train_dataloader()])
    assert torch.equal(first, again) and not torch.equal(first, other)  # seeded shuffle


def test_workers_give_the_same_batches_as_the_main_process(tmp_path: Path) -> None:
    make_tree(tmp_path, pattern="gradient")
    in_process = module(tmp_path, batch_size=4, augment=False, num_workers=0)
    workers = module(tmp_path, batch_size=4, augment=False, num_workers=2)
    assert workers.train_dataloader().persistent_workers
    for a, b in zip(in_process.train_dataloader(), workers.train_dataloader(), strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    (a,) = in_process.test_dataloader()
    (b,) = workers.test_dataloader()
    assert a[0].shape == (6, 10, 3, 32, 32) and torch.equal(a[0], b[0])
    # augmented batches: each image's draws from the seed, iteration and place, in any process
    settings = ((2, 3), (0, 3), (2, 4))  # (workers, seed)
    runs = [module(tmp_path, batch_size=4, num_workers=w, seed=s) for w, s in settings]
    first = [torch.cat([b[0] for b in dm.train_dataloader()]) for dm in runs]
    assert torch.equal(first[0], first[1]) and not torch.equal(first[0], first[2])


# --- training augmentation -------------------------------------------------------------------


def _scale_and_flip(crop: torch.Tensor) -> tuple[float, bool]:
    """The shorter side a crop of a 36×36 image with red = 7·column was resized to, from the
    red slope of its interior, and whether it is mirrored."""
    profile = crop[0].double().mean(0)[2:-2]
    slope = np.polyfit(np.arange(len(profile)), profile.numpy(), 1)[0]
    return 7 * 36 / abs(slope), slope < 0


def test_scale_augmentation_crop_and_flip(tmp_path: Path) -> None:
    write_jpeg(tmp_path / "train/n0/a.JPEG", gradient(36, 36, step=7))
    write_jpeg(tmp_path / "val/n0/a.JPEG", gradient(36, 36, step=7))
    dm = module(tmp_path, normalize="channel")
    dataset = dm.train_dataloader().dataset
    torch.manual_seed(0)
    crops = [dataset[0][0] for _ in range(200)]
    assert all(c.shape == (3, 32, 32) and c.dtype == torch.uint8 for c in crops)
    scales, flips = zip(*(_scale_and_flip(c) for c in crops), strict=True)
    assert 35 < min(scales) < 38 and 46 < max(scales) < 49  # the whole range [36, 48]
    assert 70 < sum(flips) < 130  # mirrored half of the time
    corners = {(int(c[0, 0, 0]), int(c[1, 0, 0])) for c in crops}
    assert len(corners) > 20  # the crop's position varies too
    # without augmentation: always the centre crop of the image resized to eval_resize (36)
    plain = module(tmp_path, normalize="channel", augment=False).train_dataloader().dataset
    for _ in range(3):
        scale, flipped = _scale_and_flip(plain[0][0])
        assert abs(scale - 36) < 0.5 and not flipped


def test_lighting_noise_only_in_training(tree) -> None:
    dm = module(tree[0])
    images, labels = next(iter(dm.val_dataloader()))
    clean = (images.float() - dm.mean) / 255
    x, y = dm.on_after_batch_transfer((images, labels), 0)  # no trainer: evaluation
    assert x.dtype == torch.float32 and torch.equal(x, clean) and torch.equal(y, labels)
    dm.trainer = trainer()
    dm.trainer.validating = True
    assert torch.equal(dm.on_after_batch_transfer((images, labels), 0)[0], clean)
    dm.trainer.training = True
    assert torch.equal(dm.on_after_batch_transfer((images, labels), 0)[0], clean)  # no alpha
    torch.manual_seed(0)
    batch = torch.randint(0, 256, (300, 3, 32, 32), dtype=torch.uint8)
    dataset, order = dm.train_dataloader().dataset, dm.train_dataloader().sampler
    alphas = torch.stack([dataset[(0, key)][2] for key in range(300)])  # what training draws
    noisy = dm.on_after_batch_transfer((batch, torch.zeros(300), alphas), 0)[0]
    offset = (noisy - (batch.float() - dm.mean) / 255) * 255  # pixel units
    per_image = offset[:, :, :1, :1]
    assert torch.allclose(offset, per_image.expand_as(offset), atol=1e-3)  # one RGB shift each
    eigvec, eigval = torch.tensor(PCA_EIGVEC), torch.tensor(PCA_EIGVAL)
    alpha = per_image.flatten(1) @ eigvec / (eigval * 255)  # eigvec is orthonormal
    assert 0.085 < float(alpha.std()) < 0.115 and abs(float(alpha.mean())) < 0.02
    keys = [key for _, key in order]
    assert len(set(keys)) == len(keys)  # an epoch's images each draw from a key of their own
    off = module(tree[0], color_augment=False)
    off.trainer = dm.trainer
    no_noise = off.on_after_batch_transfer((images, labels, alphas[: len(images)]), 0)[0]
    assert torch.equal(no_noise, clean)


# --- normalisation ---------------------------------------------------------------------------


def test_pixel_mean_and_its_cache(tree) -> None:
    root, colours = tree
    dm = module(root)
    train_colours = [c for name, c in colours.items() if name.startswith("train/")]
    expected = torch.tensor(train_colours, dtype=torch.float32).mean(0)
    assert dm.mean.shape == (3, 32, 32)
    assert torch.allclose(dm.mean, expected.view(3, 1, 1).expand(3, 32, 32), atol=1.5)
    (cache,) = root.glob("pixel_mean_32px_resize36_12images_*.pt")
    # a subset of the training images: its own colours and its own cache file
    five = module(root, mean_images=5)
    chosen = [colours["train/" + f.decode()] for f in five.train_images.subset(5, 0).files]
    assert torch.allclose(five.mean[:, 0, 0], torch.tensor(chosen).float().mean(0), atol=1.5)
    assert len(list(root.glob("pixel_mean_*.pt"))) == 2
    # the cached file is what the next run reads
    saved = torch.load(cache, weights_only=True)
    torch.save({**saved, "mean": torch.full((3, 32, 32), 7.0)}, cache)
    assert torch.equal(module(root).mean, torch.full((3, 32, 32), 7.0))
    cache.write_bytes(b"not a tensor file")
    with pytest.warns(UserWarning, match=r"cannot read mean cache '.*pixel_mean_32px.*recomputing"):
        assert torch.allclose(module(root).mean, dm.mean)
    assert torch.equal(torch.load(cache, weights_only=True)["mean"], dm.mean)  # rewritten
    # a data folder where the cache cannot be written: the mean stays in memory
    cache.unlink()
    cache.mkdir()
    assert torch.allclose(module(root).mean, dm.mean)
    assert cache.is_dir() and not list(root.glob("*.tmp"))


@pytest.mark.parametrize("num_workers", [0, 1])
def test_the_mean_cache_and_evaluation_draw_nothing_from_the_global_rng(
    tree, num_workers: int
) -> None:
    """Computing the per-pixel mean (or reading its cache) and iterating the evaluation
    loaders leave torch's global generator as it was: a run that computes the cache and one
    that reads it draw the same augmentation (a DataLoader without a generator draws its
    base seed from the global one)."""
    root, _ = tree
    torch.manual_seed(0)
    state = torch.get_rng_state()
    dm = module(root, num_workers=num_workers)  # computes the cache
    assert torch.equal(torch.get_rng_state(), state)
    module(root, num_workers=num_workers)  # reads it
    for loader in (dm.val_dataloader(), dm.test_dataloader()):
        assert len(list(loader)) > 0
    assert torch.equal(torch.get_rng_state(), state)


def test_mean_subtracted_from_eval_batches_of_10_crops(tree) -> None:
    dm = module(tree[0], test_crops=10)
    images, labels = next(iter(dm.test_dataloader()))
    x, _ = dm.on_after_batch_transfer((images, labels), 0)
    assert x.shape == (6, 10, 3, 32, 32)
    assert torch.allclose(x, (images.float() - dm.mean) / 255)
    assert x.abs().mean() < 1  # solid colours minus the mean of such colours


def test_channel_normalisation(tree) -> None:
    dm = module(tree[0], normalize="channel")
    assert not list(tree[0].glob("pixel_mean_*.pt"))  # nothing to compute
    images, labels = next(iter(dm.val_dataloader()))
    x, _ = dm.on_after_batch_transfer((images, labels), 0)
    mean, std = torch.tensor(CHANNEL_MEAN).view(3, 1, 1), torch.tensor(CHANNEL_STD).view(3, 1, 1)
    assert torch.allclose(x, (images.float() / 255 - mean) / std, atol=1e-5)


# --- evaluation crops ------------------------------------------------------------------------


def test_one_and_ten_crops(tmp_path: Path) -> None:
    make_tree(tmp_path, pattern="gradient")
    dm = module(tmp_path, val_crops=1, test_crops=10, eval_batch_size=4)
    val = list(dm.val_dataloader())
    test = list(dm.test_dataloader())
    assert [b[0].shape for b in val] == [(4, 3, 32, 32), (2, 3, 32, 32)]
    assert [b[0].shape for b in test] == [(4, 10, 3, 32, 32), (2, 10, 3, 32, 32)]
    one = torch.cat([b[0] for b in val])
    ten = torch.cat([b[0] for b in test])
    assert torch.equal(ten[:, 4], one)  # crop 4 is the centre crop
    assert torch.equal(ten[:, 5:], ten[:, :5].flip(-1))  # crops 5-9 mirror crops 0-4
    for i in range(len(ten)):  # the corners of the image resized to shorter side 36
        image = torch.from_numpy(np.array(Image.open(dm.test_images.path(i)))).permute(2, 0, 1)
        resized = TF.resize(image, [36], antialias=True)
        assert min(resized.shape[1:]) == 36
        assert torch.equal(ten[i, 0], resized[:, :32, :32])
        assert torch.equal(ten[i, 1], resized[:, :32, -32:])
        assert torch.equal(ten[i, 2], resized[:, -32:, :32])
        assert torch.equal(ten[i, 3], resized[:, -32:, -32:])
        top, left = (resized.shape[1] - 32) // 2, (resized.shape[2] - 32) // 2  # rounded down
        assert torch.equal(ten[i, 4], resized[:, top : top + 32, left : left + 32])
    swapped = module(tmp_path, val_crops=10, test_crops=1)
    assert next(iter(swapped.val_dataloader()))[0].shape[1:] == (10, 3, 32, 32)
    assert next(iter(swapped.test_dataloader()))[0].shape[1:] == (3, 32, 32)


def test_grey_cmyk_and_png_files_become_rgb(tmp_path: Path) -> None:
    pixels = gradient(40, 56)
    write_jpeg(tmp_path / "train/n0/grey_ä.JPEG", pixels, mode="L")  # any file name
    write_jpeg(tmp_path / "train/n0/cmyk.JPEG", pixels, mode="CMYK")
    Image.fromarray(pixels).save(tmp_path / "train/n0/png.JPEG", format="PNG")  # as in ImageNet
    write_jpeg(tmp_path / "val/n0/a.jpg", pixels)
    dm = module(tmp_path, augment=False, batch_size=3)
    dataset = dm.train_dataloader().dataset
    images = torch.stack([dataset[i][0] for i in range(3)])
    assert images.shape == (3, 3, 32, 32)
    cmyk, grey, png = images.float()  # sorted by name
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    assert (cmyk - png).abs().mean() < 3 and (png[0] - grey[0]).abs().mean() > 10


# --- subsets ---------------------------------------------------------------------------------


def test_val_size_and_train_subset(tree) -> None:
    root, _ = tree
    full = module(root, normalize="channel")
    dm = module(root, val_size=4, train_subset=5, normalize="channel")
    assert len(dm.val_images) == len(dm.test_images) == 4 and len(dm.train_images) == 5
    assert set(dm.val_images.files) < set(full.val_images.files)
    assert set(dm.train_images.files) < set(full.train_images.files)
    same = module(root, val_size=4, train_subset=5, normalize="channel")
    assert np.array_equal(same.val_images.files, dm.val_images.files)
    assert np.array_equal(same.train_images.files, dm.train_images.files)
    other = module(root, val_size=4, train_subset=5, split_seed=1, normalize="channel")
    assert not np.array_equal(other.train_images.files, dm.train_images.files)
    assert sum(len(y) for _, y in dm.val_dataloader()) == 4
    larger = module(root, val_size=100, train_subset=100, normalize="channel")
    assert (len(larger.val_images), len(larger.train_images)) == (6, 12)  # all of them


def test_no_validation(tree) -> None:
    dm = module(tree[0], val_size=0, normalize="channel")
    assert not dm.has_val and dm.val_dataloader() == []
    assert sum(len(y) for _, y in dm.test_dataloader()) == 6  # test: the whole val folder


# --- bad input -------------------------------------------------------------------------------


def test_missing_data_dir(tmp_path: Path) -> None:
    with pytest.raises(
        FileNotFoundError,
        match=r"data.data_dir '.*nowhere' does not exist\. Put the images in "
        r"'.*nowhere/train/<class>/\*\.JPEG' and '.*nowhere/val/<class>/\*\.JPEG'.* "
        r"ImageNet cannot be downloaded automatically",
    ):
        module(tmp_path / "nowhere")
    (tmp_path / "train" / "n0").mkdir(parents=True)
    write_jpeg(tmp_path / "train/n0/a.JPEG", gradient(40, 40))
    with pytest.raises(FileNotFoundError, match=r"ImageNet folder '.*/val' is missing"):
        module(tmp_path)


def test_no_class_folders(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    with pytest.raises(ValueError, match=r"no class folders in '.*train': expected"):
        module(tmp_path)
    write_jpeg(tmp_path / "train/n0/a.JPEG", gradient(40, 40))
    write_jpeg(tmp_path / "val/ILSVRC2012_val_00000001.JPEG", gradient(40, 40))
    with pytest.raises(ValueError, match=r"holds 1 images directly .* sort them into class"):
        module(tmp_path)


def test_class_folder_without_images(tree) -> None:
    root, _ = tree
    (root / "train" / "n09999999").mkdir()
    (root / "val" / "n09999999").mkdir()
    with pytest.raises(
        ValueError, match=r"1 class folder\(s\) without images: '.*train/n09999999'"
    ):
        module(root)


def test_non_image_files_are_skipped_with_a_warning(tree) -> None:
    root, _ = tree
    (root / "train" / CLASSES[1] / "notes.txt").write_text("not an image")
    with pytest.warns(UserWarning, match=rf"skipping 1 non-image .*{CLASSES[1]}/notes\.txt'"):
        dm = module(root)
    assert len(dm.train_images) == 12  # the 12 images, not the text file
    for f in (root / "train" / CLASSES[2]).iterdir():
        f.rename(f.with_suffix(".bak"))
    with (
        pytest.warns(UserWarning, match=r"skipping 5 non-image"),
        pytest.raises(ValueError, match=rf"without images: '.*train/{CLASSES[2]}'"),
    ):
        module(root)


def test_val_classes_must_match(tree) -> None:
    root, _ = tree
    (root / "val" / CLASSES[0]).rename(root / "val" / "n09999999")
    with pytest.raises(
        ValueError, match=rf"missing in val: \['{CLASSES[0]}'\]; only in val: \['n09999999'\]"
    ):
        module(root)


def test_undecodable_image_is_named(tree) -> None:
    root, _ = tree
    broken = root / "train" / CLASSES[0] / f"{CLASSES[0]}_0.JPEG"
    good = broken.read_bytes()
    broken.write_bytes(good[:40])  # truncated
    dm = ImageNetDataModule(root, **{**TINY, "normalize": "channel"}, batch_size=12)
    dm.setup()
    with pytest.raises(ValueError, match=rf"cannot decode image '.*{CLASSES[0]}_0\.JPEG'"):
        next(iter(dm.train_dataloader()))
    dm = ImageNetDataModule(root, **TINY)  # the mean reads every training image in setup
    with pytest.raises(ValueError, match=rf"cannot decode image '.*{CLASSES[0]}_0\.JPEG'"):
        dm.setup()
    broken.write_bytes(good)
    dm.setup()  # a failed setup leaves nothing half-done behind
    assert dm.mean is not None and len(dm.train_images) == 12


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("crop_size", 0, r"data.crop_size=0 is not valid; valid: an integer >= 1"),
        ("scale", (20, 48), r"data.scale must be two integers .*crop_size=32.*got \(20, 48\)"),
        ("scale", (48, 40), r"data.scale must be two integers .* got \(48, 40\)"),
        ("scale", 40, r"data.scale must be two integers .* got 40"),
        ("eval_resize", 20,
         r"data.eval_resize=20 is not valid; valid: an integer >= 32 \(data.crop_size=32\)"),
        ("normalize", "mean", r"data.normalize='mean' is not valid; valid: pixel_mean, channel"),
        ("val_crops", 5, r"data.val_crops=5 is not valid; valid: 1, 10"),
        ("test_crops", 3, r"data.test_crops=3 is not valid; valid: 1, 10"),
        ("val_size", -1, r"data.val_size=-1 is not valid; valid: an integer >= 0 or null"),
        ("train_subset", 0, r"data.train_subset=0 is not valid; valid: an integer >= 1 or null"),
        ("num_workers", -1, r"data.num_workers=-1 is not valid; valid: an integer >= 0"),
        ("batch_size", 0, r"data.batch_size=0 is not valid; valid: an integer >= 1"),
    ],
)
def test_bad_options(key: str, value, message: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=message):
        ImageNetDataModule(tmp_path, **{**TINY, key: value})


def test_global_batch_must_split_over_processes(tree) -> None:
    dm = module(tree[0], batch_size=5, normalize="channel")
    dm.trainer = trainer(devices=2, strategy="ddp")
    with pytest.raises(ValueError, match=r"batch_size=5 .* not divisible by the 2 processes"):
        dm.train_dataloader()
    dm.batch_size = 4
    assert dm.train_dataloader().batch_size == 2  # each process loads its share


def test_before_setup() -> None:
    dm = ImageNetDataModule("nowhere", **TINY)
    with pytest.raises(RuntimeError, match=r"call setup\(\)"):
        dm.train_dataloader()
    with pytest.raises(RuntimeError, match=r"call setup\(\)"):
        dm.on_after_batch_transfer((torch.zeros(1, 3, 32, 32), torch.zeros(1)), 0)


# --- config ----------------------------------------------------------------------------------


def test_config_has_the_papers_values_and_takes_the_smoke_preset(tmp_path: Path, hydra_cfg) -> None:
    cfg = hydra_cfg(tmp_path / "a", ["data=imagenet", f"paths.data_dir={tmp_path}"])
    d = cfg.data
    assert d.data_dir == str(tmp_path / "imagenet") and d.batch_size == 256
    assert (d.crop_size, list(d.scale), d.eval_resize) == (224, [256, 480], 256)
    assert (d.normalize, d.color_augment, d.val_crops, d.test_crops) == ("pixel_mean", True, 1, 10)
    assert d.val_size is None and "download" not in d and "padding" not in d
    dm = instantiate(d)
    assert (dm.image_size, dm.scale, dm.eval_resize) == (224, (256, 480), 256)
    make_tree(tmp_path / "imagenet", n_train=6)
    cfg = hydra_cfg(
        tmp_path / "b",
        ["data=imagenet", "debug=smoke", f"paths.data_dir={tmp_path}", "data.crop_size=32",
         "data.scale=[36,48]", "data.eval_resize=36", "data.num_workers=0"],
    )  # fmt: skip
    dm = instantiate(cfg.data)
    dm.setup("fit")
    assert len(dm.train_images) == 18 and len(dm.val_images) == 6  # smoke asks for more
    images, *_ = next(iter(dm.train_dataloader()))
    assert images.shape == (16, 3, 32, 32)


def test_evaluation_images_are_shared_by_the_processes_once_each(tree) -> None:
    """Lightning's DistributedSampler would pad 5 images to 3 + 3, counting one twice."""
    dm = module(tree[0], val_size=5, normalize="channel")
    dm.trainer = trainer(devices=2, strategy="ddp")
    for loader in (dm.val_dataloader(), dm.test_dataloader()):
        assert isinstance(loader.sampler, EvalShard)  # Lightning keeps a DistributedSampler
        assert loader.sampler.rank == 0 and list(loader.sampler) == [0, 2, 4]
    assert list(EvalShard(range(5), 2, 1)) == [1, 3] and len(EvalShard(range(5), 2, 1)) == 2
    for n, ranks in ((0, 3), (1, 2), (2, 5), (7, 3)):  # each image once (ranks > images too)
        shards = [EvalShard(range(n), ranks, r) for r in range(ranks)]
        assert sorted(i for s in shards for i in s) == list(range(n))
        assert [len(s) for s in shards] == [len(range(r, n, ranks)) for r in range(ranks)]
    dm = module(tree[0], val_size=1, normalize="channel")
    dm.trainer = trainer(devices=2, strategy="ddp")
    with pytest.raises(ValueError, match=r"1 evaluation images cannot be shared by 2 processes"):
        dm.val_dataloader()


@pytest.mark.parametrize("world", [2, 4])
def test_training_draws_depend_on_the_seed_iteration_and_place_alone(tree, world: int) -> None:
    """The ranks' items of each global batch (image, draw key), taken in turn, are one
    process's; a pass that starts at iteration k (a resume) yields the uninterrupted pass's
    items from batch k on; and the augmented images of a 2-rank split are one process's, byte
    for byte. Each image's draws differ from its neighbours' (not one draw per rank)."""
    dm = module(tree[0], batch_size=4)
    dataset = dm.train_dataloader().dataset

    def order(rank: int, ranks: int, start: int = 0) -> list[tuple[int, int]]:
        return list(TrainOrder(dataset, 4, 0, rank, ranks, lambda: start))

    one = order(0, 1)
    assert len(one) == 12 and len({i for i, _ in one}) == 12  # 3 batches of 4: each image once
    shares = [order(r, world) for r in range(world)]
    per_rank = 4 // world
    for b in range(3):  # batch b: rank r holds its places r, r + world, ...
        got = [None] * 4
        for r, share in enumerate(shares):
            got[r::world] = share[b * per_rank : (b + 1) * per_rank]
        assert got == one[b * 4 : (b + 1) * 4]
    assert order(0, 1, start=2) == one[8:]  # a pass from batch 2 on: the rest of epoch 0
    assert order(0, 1, start=5) == order(0, 1, start=3)[8:]  # batch 5: epoch 1's third
    assert order(0, 1, start=3) != one  # epoch 1: another permutation
    images = [dataset[item][0] for item in one[:4]]
    split = [dataset[item][0] for share in shares for item in share[:per_rank]]
    assert all(any(torch.equal(a, b) for b in split) for a in images)
    assert len({key for _, key in one}) == 12


def test_the_training_loader_is_resumable_for_lightning(tree) -> None:
    """Lightning resumes a loader mid-epoch only when it has state_dict / load_state_dict
    (else it warns that the dataloader "is not resumable" and restarts the epoch's order)."""
    loader = module(tree[0], batch_size=4).train_dataloader()
    assert isinstance(loader.sampler, TrainOrder)
    loader.load_state_dict(loader.state_dict())  # (tests/test_resume.py resumes one for real)
