"""What produced a run: reslab's version and git commit (and the uncommitted changes of a dirty
tree), the versions of the libraries that decide its numbers, the device, the host and the
command line. train.py writes it in the run folder (run_folder.write_provenance) and in the
wandb config; reslab-report shows the commit of each table's runs.

    record, diff = provenance(*trainer_device(trainer))
"""

from __future__ import annotations

import hashlib
import platform
import shlex
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import lightning as L

UNKNOWN = "unknown"
# The distributions whose versions a run records: (key in the record, distribution name).
LIBRARIES = (
    ("reslab", "reslab"),
    ("torch", "torch"),
    ("lightning", "lightning"),
    ("hydra", "hydra-core"),
    ("wandb", "wandb"),
)
PACKAGE_DIR = Path(__file__).resolve().parent
UNTRACKED_DIFF_BYTES = 1 << 20  # an untracked file larger than this is named, not copied


def versions() -> dict[str, str]:
    """Python's version and those of :data:`LIBRARIES`, as importlib.metadata has them
    ("unknown" for one that is not installed)."""
    found = {"python": platform.python_version()}
    for key, distribution in LIBRARIES:
        try:
            found[key] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            found[key] = UNKNOWN
    return found


def _git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, text=True, check=True, timeout=30
    ).stdout


def reslab_checkout() -> Path | None:
    """The git checkout reslab runs from (its ``src/reslab`` is this package), else None: an
    installed wheel, even one inside somebody else's repository."""
    try:
        top = Path(_git(PACKAGE_DIR, "rev-parse", "--show-toplevel").strip())
    except (OSError, subprocess.SubprocessError):
        return None
    return top if (top / "src" / "reslab").resolve() == PACKAGE_DIR else None


def git_state(root: Path | None) -> tuple[dict[str, Any], str | None]:
    """The checkout at ``root``: ``{"commit", "dirty"}`` (and ``diff_sha256`` when dirty), with
    the uncommitted changes as one diff (``git diff HEAD``, then the untracked files as new
    files); commit "unknown" and dirty None when ``root`` is None or not a git checkout."""
    unknown = {"commit": UNKNOWN, "dirty": None}
    if root is None:
        return unknown, None
    try:
        commit = _git(root, "rev-parse", "HEAD").strip()
        changed = _git(root, "status", "--porcelain").strip()
        if not changed:
            return {"commit": commit, "dirty": False}, None
        diff = _git(root, "diff", "HEAD", "--binary")
        untracked = _git(root, "ls-files", "--others", "--exclude-standard", "-z").split("\0")
    except (OSError, subprocess.SubprocessError):
        return unknown, None
    for name in filter(None, untracked):
        path = root / name
        if not path.is_file() or path.stat().st_size > UNTRACKED_DIFF_BYTES:
            diff += f"# untracked, not copied here: {name}\n"
            continue
        # git diff --no-index exits 1 when the files differ, which they do
        diff += subprocess.run(
            ["git", "-C", str(root), "diff", "--no-index", "--binary", "/dev/null", name],
            capture_output=True, text=True, timeout=30,
        ).stdout  # fmt: skip
    digest = hashlib.sha256(diff.encode()).hexdigest()
    return {"commit": commit, "dirty": True, "diff_sha256": digest}, diff


def trainer_device(trainer: L.Trainer) -> tuple[str, int]:
    """The device a trainer runs on, by name (the GPU's model; ``cpu``), and how many."""
    import torch

    root = trainer.strategy.root_device
    name = torch.cuda.get_device_name(root) if root.type == "cuda" else root.type
    return name, trainer.num_devices * trainer.num_nodes


def provenance(device: str, device_count: int) -> tuple[dict[str, Any], str | None]:
    """The run's record (reslab's version, commit and dirty flag, the library versions, the
    device, host and command line) and the diff of a dirty tree (None when clean or unknown)."""
    found = versions()
    git, diff = git_state(reslab_checkout())
    record = {
        "reslab": found.pop("reslab"),
        **git,
        **found,
        "device": device,
        "device_count": device_count,
        "host": socket.gethostname(),
        "command": shlex.join(sys.orig_argv),
    }
    return record, diff
