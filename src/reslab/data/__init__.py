"""Datasets as uint8 image tensors: the CIFAR-size ones held in memory with the paper's batched
augmentation, ImageNet decoded from its folders by worker processes."""

from reslab.data.base import BatchLoader, InMemoryDataModule
from reslab.data.cifar import CIFAR10DataModule, CIFAR100DataModule
from reslab.data.fashion_mnist import FashionMNISTDataModule
from reslab.data.imagenet import ImageNetDataModule
from reslab.data.synthetic import SyntheticDataModule

__all__ = [
    "BatchLoader",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "FashionMNISTDataModule",
    "ImageNetDataModule",
    "InMemoryDataModule",
    "SyntheticDataModule",
]
