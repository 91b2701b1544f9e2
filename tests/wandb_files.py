"""Reading a wandb run back as ``wandb sync`` would upload it: the records of its offline
``.wandb`` file, its config, summary and history. For tests of what reaches wandb."""

import json
import time
from pathlib import Path

from reslab.loggers import read_wandb_records


def offline_runs(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "wandb").glob("offline-run-*"))


def wandb_records(path: Path, wait_s: float = 30.0) -> list:
    """The records of a run's .wandb file (what ``wandb sync`` uploads) as wandb's own protobuf
    ``Record`` messages, once the file ends with the run's ``exit`` record: wandb's service
    process may still be writing it when ``wandb.finish()`` has returned (seen here: the last
    history rows missing)."""
    deadline = time.monotonic() + wait_s
    while True:
        records = _read_wandb_file(path)
        if (records and records[-1].HasField("exit")) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def _read_wandb_file(path: Path) -> list:
    data = path.read_bytes()
    assert data[:4] in (b":W&B", b":W&B"[: len(data)]), path  # wandb's header
    return read_wandb_records(path)


def _items(items) -> dict:
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}


def wandb_config(path: Path) -> dict:
    """The run's config as wandb holds it: top-level key → value."""
    config: dict = {}
    for record in wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind in ("run", "config"):
            config |= _items((record.run.config if kind == "run" else record.config).update)
    return config


def wandb_summary(path: Path) -> dict:
    """The run's summary as its last updates leave it: key → value."""
    summary: dict = {}
    for record in wandb_records(path):
        if record.HasField("summary"):
            summary |= _items(record.summary.update)
    return summary


def wandb_history(path: Path) -> list[dict]:
    """Every ``wandb.log`` row of the run: metric → value."""
    return [_items(r.history.item) for r in wandb_records(path) if r.HasField("history")]
