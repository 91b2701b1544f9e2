"""What produced a run: reslab's version and commit (a dirty tree's diff), the libraries that
decide its numbers, device, host, command (``record, diff = provenance(*trainer_device(t))``)."""

from __future__ import annotations

import hashlib
import os
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
# The reslab-train command of a sweep, for its jobs (a loky or submitit worker has its own).
COMMAND_ENV = "RESLAB_COMMAND"
LIBRARIES = (  # whose versions a run records: (key in the record, distribution name)
    ("reslab", "reslab"),
    ("torch", "torch"),
    ("lightning", "lightning"),
    ("hydra", "hydra-core"),
    ("wandb", "wandb"),
)
PACKAGE_DIR = Path(__file__).resolve().parent
UNTRACKED_DIFF_BYTES = 1 << 20  # an untracked file larger than this is named, not copied


def versions() -> dict[str, str]:
    """Python's version and those of :data:`LIBRARIES` ("unknown" when not installed)."""
    found = {"python": platform.python_version()}
    for key, distribution in LIBRARIES:
        try:
            found[key] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            found[key] = UNKNOWN
    return found


def _git(root: Path, *args: str, check: bool = True) -> str:
    return subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, text=True, check=check, timeout=30
    ).stdout


def reslab_checkout() -> Path | None:
    """The git checkout whose ``src/reslab`` is this package; None for an installed wheel."""
    try:
        top = Path(_git(PACKAGE_DIR, "rev-parse", "--show-toplevel").strip())
    except (OSError, subprocess.SubprocessError):
        return None
    return top if (top / "src" / "reslab").resolve() == PACKAGE_DIR else None


def git_state(root: Path | None) -> tuple[dict[str, Any], str | None]:
    """``{"commit", "dirty"}`` (and ``diff_sha256``) of the checkout at ``root``, and its
    uncommitted changes as one diff (``git diff HEAD``, then untracked files as new ones);
    commit "unknown" and dirty None when ``root`` is None or not a git checkout."""
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
        diff += _git(root, "diff", "--no-index", "--binary", "/dev/null", name, check=False)
    digest = hashlib.sha256(diff.encode()).hexdigest()
    return {"commit": commit, "dirty": True, "diff_sha256": digest}, diff


def trainer_device(trainer: L.Trainer) -> tuple[str, int]:
    """The device a trainer runs on, by name (the GPU's model; ``cpu``), and how many."""
    import torch

    root = trainer.strategy.root_device
    name = torch.cuda.get_device_name(root) if root.type == "cuda" else root.type
    return name, trainer.num_devices * trainer.num_nodes


def provenance(device: str, device_count: int) -> tuple[dict[str, Any], str | None]:
    """The run's record and the diff of a dirty tree (None when clean or unknown)."""
    found = versions()
    git, diff = git_state(reslab_checkout())
    return {
        "reslab": found.pop("reslab"),
        **git,
        **found,
        "device": device,
        "device_count": device_count,
        "host": socket.gethostname(),
        "command": os.environ.get(COMMAND_ENV) or shlex.join(sys.orig_argv),
    }, diff


def code_label(provenance: dict[str, Any]) -> str | None:
    """The code a run ran: its commit (10 digits), ``+dirty <diff hash>`` for uncommitted
    changes, or ``reslab <version>`` where the commit is unknown (an installed wheel); None
    for a run without provenance.json (it failed before training)."""
    if not provenance:
        return None
    commit = str(provenance.get("commit") or "unknown")
    if commit == "unknown":
        return f"reslab {provenance.get('reslab', 'unknown')} (commit unknown)"
    if provenance.get("dirty"):
        return f"{commit[:10]}+dirty {str(provenance.get('diff_sha256', ''))[:8]}".rstrip()
    return commit[:10]
