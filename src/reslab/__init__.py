"""reslab: deep residual learning (He et al., CVPR 2016) with PyTorch Lightning and Hydra."""

__version__ = "0.1.0"
