"""Read back what an offline wandb run recorded: its ``run-<id>.wandb`` file, record by record.

wandb 0.31 writes no ``wandb-summary.json`` for offline runs; the ``.wandb`` file is a LevelDB-style log
(32 KiB blocks, each record split into chunks with a 7-byte header: CRC32C, length, chunk type) of
protobuf ``Record`` messages, which ``wandb sync`` uploads later. Test helper only.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2

BLOCK = 32 * 1024
HEADER = 7  # checksum (4 bytes), length (2), chunk type (1): 1 full, 2 first, 3 middle, 4 last
FILE_HEADER = b":W&B"


def records(path: Path) -> list[wandb_internal_pb2.Record]:
    data = path.read_bytes()
    assert data.startswith(FILE_HEADER), f"{path} is not a wandb transaction log"
    position, pending, found = HEADER, b"", []
    while position + HEADER <= len(data):
        if BLOCK - position % BLOCK < HEADER:  # a block's tail too short for a header is padding
            position += BLOCK - position % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + HEADER])
        chunk = data[position + HEADER : position + HEADER + length]
        position += HEADER + length
        if kind == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            found.append(record)
    return found


def run_file(directory: Path) -> Path:
    """The one offline run's ``.wandb`` file under ``directory`` (a job's output directory)."""
    (run,) = directory.glob("wandb/offline-run-*/run-*.wandb")
    return run


def summary(path: Path) -> dict[str, Any]:
    """The run's final summary: every summary update merged in order (keys joined with ``/``)."""
    merged: dict[str, Any] = {}
    for record in records(path):
        if record.WhichOneof("record_type") == "summary":
            for item in record.summary.update:
                key = item.key or "/".join(item.nested_key)
                merged[key] = json.loads(item.value_json)
    return merged


def exit_code(path: Path) -> int | None:
    for record in records(path):
        if record.WhichOneof("record_type") == "exit":
            return record.exit.exit_code
    return None


def logged_keys(path: Path) -> set[str]:
    """Every key the run logged with ``run.log`` (history rows)."""
    keys = set()
    for record in records(path):
        if record.WhichOneof("record_type") == "history":
            keys |= {item.key or "/".join(item.nested_key) for item in record.history.item}
    return keys
