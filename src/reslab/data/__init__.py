"""Datasets held in memory as uint8 tensors, with the paper's batched augmentation."""

from reslab.data.base import BatchLoader, InMemoryDataModule, Splits
from reslab.data.cifar import CIFAR10DataModule
from reslab.data.fashion_mnist import FashionMNISTDataModule
from reslab.data.synthetic import SyntheticDataModule

__all__ = [
    "BatchLoader",
    "CIFAR10DataModule",
    "FashionMNISTDataModule",
    "InMemoryDataModule",
    "Splits",
    "SyntheticDataModule",
]
