"""The paper's published numbers (He et al., CVPR 2016, arXiv 1512.03385), keyed by network name
as :func:`reslab.networks.network_name` spells it ("resnet-20A", "plain-34"). ``PARAMS`` are
exact counts of its architectures (it prints rounded ones); ``MULTIPLY_ADDS`` of one image count
convolutions and the FC layer (Table 1's to more digits; CIFAR's, which it does not give, counted
from section 4.2). Errors are in percent; Figure 6's are APPROXIMATE, read off the plot.
"""

from dataclasses import dataclass
from typing import NamedTuple


class TopErrors(NamedTuple):
    """ImageNet validation error in percent; ``top5`` is None where the table gives none."""

    top1: float
    top5: float | None = None


_CIFAR_PARAMS = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018, 110: 1_727_962,
                 1202: 19_421_274}  # fmt: skip
_CIFAR_MULTIPLY_ADDS = {20: 40.55e6, 32: 68.86e6, 44: 97.17e6, 56: 125.49e6, 110: 252.89e6,
                        1202: 2.83e9}  # fmt: skip
CIFAR_OPTION_B_EXTRA_PARAMS = 2_752

# Every network the paper gives a number for is in one of these two.
CIFAR_PARAMS: dict[str, int] = {
    **{f"plain-{d}": p for d, p in _CIFAR_PARAMS.items()},
    **{f"resnet-{d}A": p for d, p in _CIFAR_PARAMS.items()},
    **{f"resnet-{d}B": p + CIFAR_OPTION_B_EXTRA_PARAMS for d, p in _CIFAR_PARAMS.items()},
}
IMAGENET_PARAMS: dict[str, int] = {  # 1000 classes
    "plain-18": 11_515_688, "resnet-18A": 11_515_688, "resnet-18B": 11_689_512,
    "plain-34": 21_623_848, "resnet-34A": 21_623_848, "resnet-34B": 21_797_672,
    "resnet-34C": 22_716_840, "resnet-50B": 25_557_032, "resnet-101B": 44_549_160,
    "resnet-152B": 60_192_808,
}  # fmt: skip
PARAMS: dict[str, int] = {**CIFAR_PARAMS, **IMAGENET_PARAMS}

# ImageNet (Table 1): one number per depth; plain and option A nets have those of B.
_IMAGENET_MULTIPLY_ADDS = {18: 1.814e9, 34: 3.664e9, 50: 3.858e9, 101: 7.57e9, 152: 11.28e9}
MULTIPLY_ADDS: dict[str, float] = {
    **{f"plain-{d}": m for d, m in _CIFAR_MULTIPLY_ADDS.items()},
    **{f"resnet-{d}A": m for d, m in _CIFAR_MULTIPLY_ADDS.items()},
    **{n: _IMAGENET_MULTIPLY_ADDS[d] for d in (18, 34) for n in (f"plain-{d}", f"resnet-{d}A")},
    **{f"resnet-{d}B": m for d, m in _IMAGENET_MULTIPLY_ADDS.items()},
}

# Table 6: CIFAR-10 test error (%), option A; ResNet-110's is the best of 5 runs.
TABLE6_TEST_ERROR: dict[str, float] = {
    "resnet-20A": 8.75, "resnet-32A": 7.51, "resnet-44A": 7.17, "resnet-56A": 6.97,
    "resnet-110A": 6.43, "resnet-1202A": 7.93,
}  # fmt: skip
RESNET110_MEAN_STD: tuple[float, float] = (6.61, 0.16)  # Table 6: mean ± std of 5 runs

# Figure 6 (left), APPROXIMATE: read off the plot (plain-110, above 60%, is not displayed).
FIGURE6_PLAIN_TEST_ERROR_APPROX: dict[str, float] = {
    "plain-20": 9.5, "plain-32": 10.0, "plain-44": 11.5, "plain-56": 13.0,
}  # fmt: skip

# Table 2: top-1 error (%), 10-crop, ImageNet validation; ResNets use option A.
TABLE2_TOP1: dict[str, float] = {
    "plain-18": 27.94, "plain-34": 28.54, "resnet-18A": 27.88, "resnet-34A": 25.03,
}  # fmt: skip

# Table 3: top-1/top-5 error (%), 10-crop, ImageNet validation.
TABLE3_10CROP: dict[str, TopErrors] = {
    "plain-34": TopErrors(28.54, 10.02),
    "resnet-34A": TopErrors(25.03, 7.76),
    "resnet-34B": TopErrors(24.52, 7.46),
    "resnet-34C": TopErrors(24.19, 7.40),
    "resnet-50B": TopErrors(22.85, 6.71),
    "resnet-101B": TopErrors(21.75, 6.05),
    "resnet-152B": TopErrors(21.43, 5.71),
}

# Table 4: top-1/top-5 error (%), single model, multi-scale, ImageNet validation.
TABLE4_MULTISCALE: dict[str, TopErrors] = {
    "resnet-34B": TopErrors(21.84, 5.71),
    "resnet-34C": TopErrors(21.53, 5.60),
    "resnet-50B": TopErrors(20.74, 5.25),
    "resnet-101B": TopErrors(19.87, 4.60),
    "resnet-152B": TopErrors(19.38, 4.49),
}


@dataclass(frozen=True)
class Published:
    """Everything the paper gives for one network; None where it gives nothing."""

    family: str | None  # "cifar" or "imagenet": the setting the numbers belong to
    params: int | None
    multiply_adds: float | None
    cifar10_test_error: float | None  # Table 6
    cifar10_test_error_approx: float | None  # Figure 6, read off the plot
    imagenet_10crop: TopErrors | None  # Table 3, else Table 2 (top-1 only)
    imagenet_multiscale: TopErrors | None  # Table 4


def published(name: str) -> Published:
    """The paper's numbers for ``name`` (e.g. ``"resnet-56A"``); all None for a name of none of
    its networks. Depths 50 and 152 are also valid CIFAR depths: check ``family`` first."""
    family = "cifar" if name in CIFAR_PARAMS else "imagenet" if name in IMAGENET_PARAMS else None
    top1_only = TopErrors(TABLE2_TOP1[name]) if name in TABLE2_TOP1 else None
    return Published(
        family=family,
        params=PARAMS.get(name),
        multiply_adds=MULTIPLY_ADDS.get(name),
        cifar10_test_error=TABLE6_TEST_ERROR.get(name),
        cifar10_test_error_approx=FIGURE6_PLAIN_TEST_ERROR_APPROX.get(name),
        imagenet_10crop=TABLE3_10CROP.get(name, top1_only),
        imagenet_multiscale=TABLE4_MULTISCALE.get(name),
    )


def signed(x: float, spec: str = "+.2f") -> str:
    """``format(x, spec)`` (a signed spec: "+.2f", "+.2%"), but what shows as zero is "+0.00"."""
    text = format(x, spec)
    return "+" + text[1:] if text[0] == "-" and not float(text[1:].rstrip("%")) else text
