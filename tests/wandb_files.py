"""Reading a wandb run back as ``wandb sync`` would upload it: the records of its offline
``.wandb`` file, its config, summary and history. For tests of what reaches wandb; reslab
itself never reads these files (tests/test_upstream.py pins the format read here)."""

import json
import struct
import time
from pathlib import Path


def offline_runs(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "wandb").glob("offline-run-*"))


def wandb_records(path: Path, wait_s: float = 30.0) -> list:
    """The records of a run's .wandb file (what ``wandb sync`` uploads) as wandb's own protobuf
    ``Record`` messages, once the file ends with the run's ``exit`` record: wandb's service
    process may still be writing it when ``wandb.finish()`` has returned (seen here: the last
    history rows missing)."""
    deadline = time.monotonic() + wait_s
    while True:
        records = read_wandb_records(path)
        if (records and records[-1].HasField("exit")) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def read_wandb_records(path: Path) -> list:
    """The records of a ``.wandb`` file as wandb's protobuf ``Record`` messages. The file is a
    LevelDB-style log: a 7-byte header, then 32 KiB blocks of chunks, each a 7-byte header
    (crc32, length, type: 1 whole record, 2 first, 3 middle, 4 last piece) and its bytes. A
    file cut short (a killed run, or one wandb's service is still writing) is read up to its
    last whole record."""
    from wandb.proto.wandb_internal_pb2 import Record

    data, block = path.read_bytes(), 32768
    assert data[:4] in (b":W&B", b":W&B"[: len(data)]), path  # wandb's header
    position, records, pending = 7, [], b""
    while position + 7 <= len(data):
        left = block - position % block
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if left < 7 or kind == 0:  # a block's padding
            position += left
            continue
        if position + 7 + length > len(data):
            break
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            records.append(Record.FromString(pending))
            pending = b""
    return records


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
