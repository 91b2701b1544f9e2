"""Random images and labels of a chosen shape: for benchmarks and the smallest tests."""

from typing import Any

import torch

from reslab.data.base import InMemoryDataModule, require_ints


class SyntheticDataModule(InMemoryDataModule):
    """``num_train`` + ``num_test`` uniformly random uint8 images and labels (``data_seed``)."""

    name = "synthetic"

    def __init__(
        self, num_train: int = 1024, num_test: int = 256, image_size: int = 32, channels: int = 3,
        classes: int = 10, data_seed: int = 0, **kwargs: Any,
    ) -> None:  # fmt: skip
        super().__init__(kwargs.pop("data_dir", "."), **kwargs)
        require_ints(1, num_train=num_train, num_test=num_test, image_size=image_size)
        require_ints(1, channels=channels, classes=classes)
        self.num_train, self.num_test, self.image_size = num_train, num_test, image_size
        self.in_channels, self.num_classes, self.data_seed = channels, classes, data_seed

    def load(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.data_seed)
        shape = (self.in_channels, self.image_size, self.image_size)

        def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
            images = torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)
            return images, torch.randint(0, self.num_classes, (n,), generator=g)

        return (*draw(self.num_train), *draw(self.num_test))
