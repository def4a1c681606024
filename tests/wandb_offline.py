"""Read wandb *offline* run files back, for tests.

wandb >= 0.18 ships no public Python reader for the ``run-<id>.wandb`` transaction log that an offline
run writes (the old ``wandb.sdk.internal.datastore`` module is gone; the writer lives in the Go
``wandb-core`` binary).  The format is small and stable, so it is decoded here:

* a 7-byte file header: ``b":W&B"``, the magic ``0xBEE1`` (little-endian, i.e. ``e1 be``) and a
  version byte ``0``;
* then a LevelDB-style log.  The file is cut into 32 KiB blocks (the file header counts towards the
  first block).  Each record fragment has a 7-byte header -- CRC-32 (4 bytes LE), payload length
  (2 bytes LE), fragment type (1 byte: FULL=1, FIRST=2, MIDDLE=3, LAST=4) -- and never crosses a block
  boundary; when fewer than 7 bytes are left in a block they are zero padding.  The CRC is the plain,
  unmasked IEEE CRC-32 (``zlib.crc32``) of the type byte followed by the payload;
* every reassembled record is a serialized ``wandb.proto.wandb_internal_pb2.Record``.

A file cut short (a killed run) or with a damaged tail is read up to its last intact record; nothing is
raised.  Only the Python standard library, ``protobuf`` and wandb's generated protobuf classes are used.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import DecodeError
from wandb.proto import wandb_internal_pb2

# wandb.proto re-exports the generated module matching the installed protobuf (v5/v6/v7), which static
# checkers cannot follow.
pb: Any = wandb_internal_pb2

__all__ = [
    "OfflineRun",
    "WandbFileError",
    "find_run_dirs",
    "iter_records",
    "read_run",
    "read_runs",
]

FILE_IDENT = b":W&B"
FILE_MAGIC = 0xBEE1
FILE_VERSION = 0
FILE_HEADER = struct.Struct("<4sHB")  # ident, magic, version -> 7 bytes
BLOCK_LEN = 32 * 1024
RECORD_HEADER = struct.Struct("<IHB")  # crc32, length, type -> 7 bytes
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4

# Top-level keys wandb adds for its own bookkeeping; not part of what the user logged/configured.
INTERNAL_KEYS = frozenset({"_wandb"})


class WandbFileError(ValueError):
    """The file is not a wandb transaction log (bad header)."""


@dataclass
class OfflineRun:
    run_id: str
    project: str | None = None
    name: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    metric_definitions: list[dict] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    artifacts: list[dict[str, Any]] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------
# Low level: the log format
# ---------------------------------------------------------------------------------------------------


def _iter_payloads(data: bytes) -> Iterator[bytes]:
    """Yield each reassembled record payload; stop quietly at the first torn or damaged fragment."""
    head = data[: FILE_HEADER.size]
    expected = FILE_HEADER.pack(FILE_IDENT, FILE_MAGIC, FILE_VERSION)
    if head != expected:
        n = 0
        while n < len(head) and head[n] == expected[n]:
            n += 1
        if not head[n:].strip(b"\0"):
            return  # killed before (or while) writing the header: an empty log
    if len(data) < FILE_HEADER.size:
        raise WandbFileError(f"not a wandb transaction log (header {head!r})")
    ident, magic, version = FILE_HEADER.unpack_from(data, 0)
    if ident != FILE_IDENT or magic != FILE_MAGIC:
        raise WandbFileError(f"not a wandb transaction log (header {data[:7]!r})")
    if version != FILE_VERSION:
        raise WandbFileError(f"unsupported wandb transaction log version {version}")

    pos = FILE_HEADER.size
    pending: list[bytes] | None = None  # fragments of a FIRST..MIDDLE..LAST record
    verify_crc: bool | None = None  # decided on the first fragment (IEEE CRC-32 as wandb writes it)
    end_of_data = len(data)
    while True:
        left_in_block = BLOCK_LEN - pos % BLOCK_LEN
        if left_in_block < RECORD_HEADER.size:
            pos += left_in_block  # block trailer (zero padding)
            continue
        if pos + RECORD_HEADER.size > end_of_data:
            return  # clean end of file, or a header cut short
        crc, length, rtype = RECORD_HEADER.unpack_from(data, pos)
        start = pos + RECORD_HEADER.size
        end = start + length
        if rtype not in (FULL, FIRST, MIDDLE, LAST) or end > end_of_data:
            return  # zero-filled / torn tail, or payload cut short
        if length > left_in_block - RECORD_HEADER.size:
            return  # fragments never cross blocks: corrupt
        payload = data[start:end]
        if verify_crc is not False:
            ok = zlib.crc32(payload, zlib.crc32(bytes((rtype,)))) == crc
            if verify_crc is None:
                # Should a future wandb change the checksum flavour, read on without checking rather
                # than reading nothing.
                verify_crc = ok
            elif not ok:
                return  # damaged data: keep the intact prefix
        pos = end

        if rtype == FULL:
            pending = None  # a dangling FIRST without its LAST is dropped
            yield payload
        elif rtype == FIRST:
            pending = [payload]
        elif pending is not None:
            pending.append(payload)
            if rtype == LAST:
                yield b"".join(pending)
                pending = None


def iter_records(path: Path | str) -> Iterator[Any]:
    """Every intact ``wandb_internal_pb2.Record`` in a ``.wandb`` file, in file order.

    Raises ``WandbFileError`` only for a file that is not a wandb log at all; a truncated or damaged tail
    ends the iteration quietly.
    """
    data = Path(path).read_bytes()
    for payload in _iter_payloads(data):
        record = pb.Record()
        try:
            record.ParseFromString(payload)
        except DecodeError:
            continue  # checksum matched but the message does not parse: skip it
        yield record


# ---------------------------------------------------------------------------------------------------
# High level: fold the records into an OfflineRun
# ---------------------------------------------------------------------------------------------------


def _decode_json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _item_keys(item: Any) -> list[str]:
    return list(item.nested_key) if len(item.nested_key) else [item.key]


def _history_value(item: Any) -> Any:
    if item.value_json:
        return _decode_json(item.value_json)
    kind = item.WhichOneof("value")
    if kind is None or kind == "none":
        return None
    if kind == "json":
        return _decode_json(item.json)
    return getattr(item, kind)  # boolean, integer, number, text


def _set_nested(target: dict[str, Any], keys: list[str], value: Any) -> None:
    for key in keys[:-1]:
        child = target.get(key)
        if not isinstance(child, dict):
            child = target[key] = {}
        target = child
    target[keys[-1]] = value


def _remove_nested(target: dict[str, Any], keys: list[str]) -> None:
    for key in keys[:-1]:
        child = target.get(key)
        if not isinstance(child, dict):
            return
        target = child
    target.pop(keys[-1], None)


def _apply_updates(target: dict[str, Any], record: Any) -> None:
    """Apply a ConfigRecord / SummaryRecord (``update`` and ``remove`` items) to ``target``."""
    for item in record.update:
        _set_nested(target, _item_keys(item), _decode_json(item.value_json))
    for item in record.remove:
        _remove_nested(target, _item_keys(item))


def _run_id_from_filename(path: Path) -> str:
    stem = path.stem  # run-<id>
    return stem[len("run-") :] if stem.startswith("run-") else stem


def _find_wandb_file(run_dir: Path) -> Path:
    if run_dir.is_file():
        return run_dir
    candidates = sorted(run_dir.glob("run-*.wandb"))
    if not candidates:
        raise FileNotFoundError(f"no run-*.wandb file in {run_dir}")
    return candidates[0]


def read_run(run_dir: Path) -> OfflineRun:
    """Parse the ``run-*.wandb`` file inside ``run_dir`` (a path to the file itself also works).

    * ``config``/``summary``: all update/remove records applied in order, values JSON-decoded, wandb's
      internal ``_wandb`` key dropped.
    * ``history``: one dict per history record (one per committed ``log`` call), in file order.
      Nested keys (``log({"a": {"b": 1}})``, media such as ``wandb.Image``) become nested dicts.
    * ``metric_definitions``: one dict per ``define_metric`` call (protobuf field names, defaults
      omitted, e.g. ``{"glob_name": "*", "step_metric": "train/step", "options": {...}}``); metric
      records wandb expands from globs by itself are left out.
    * ``artifacts``: one dict per logged artifact version (``run.log_artifact``), in file order: ``name``,
      ``type``, ``aliases`` (sorted), ``metadata`` (decoded), ``files`` (the manifest's paths, sorted) and
      ``staged`` (manifest path -> the local copy ``wandb sync`` uploads).
    * ``files``: paths (relative to the run's ``files/`` dir) of files saved with ``wandb.save`` or
      written for logged media, in first-seen order; wandb's own files (requirements.txt, ...) are left
      out.
    """
    run_dir = Path(run_dir)
    path = _find_wandb_file(run_dir)
    run = OfflineRun(run_id=_run_id_from_filename(path))
    seen_files: set[str] = set()

    for record in iter_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run.run_id = r.run_id or run.run_id
            run.project = r.project or run.project
            run.name = r.display_name or run.name
            run.group = r.run_group or run.group
            run.tags = list(r.tags)
            _apply_updates(run.config, r.config)
            _apply_updates(run.summary, r.summary)
        elif kind == "config":
            _apply_updates(run.config, record.config)
        elif kind == "summary":
            _apply_updates(run.summary, record.summary)
        elif kind == "history":
            row: dict[str, Any] = {}
            for item in record.history.item:
                _set_nested(row, _item_keys(item), _history_value(item))
            if "_step" not in row and record.history.HasField("step"):
                row["_step"] = record.history.step.num
            run.history.append(row)
        elif kind == "metric":
            if record.metric.expanded_from_glob:
                continue
            definition = MessageToDict(record.metric, preserving_proto_field_name=True)
            definition.pop("_info", None)
            run.metric_definitions.append(definition)
        elif kind == "artifact":
            a = record.artifact
            contents = {entry.path: entry.local_path for entry in a.manifest.contents}
            run.artifacts.append({"name": a.name, "type": a.type, "aliases": sorted(a.aliases),
                                  "metadata": _decode_json(a.metadata) if a.metadata else {},
                                  "files": sorted(contents), "staged": contents})
        elif kind == "files":
            for item in record.files.files:
                if item.type == pb.FilesItem.FileType.WANDB or item.path in seen_files:
                    continue
                seen_files.add(item.path)
                run.files.append(item.path)

    for key in INTERNAL_KEYS:
        run.config.pop(key, None)
        run.summary.pop(key, None)
    return run


def find_run_dirs(root: Path) -> list[Path]:
    """Every offline run directory (``offline-run-*``) under root (searched recursively, e.g.
    ``root/wandb/offline-run-...``), sorted by name (i.e. by start time)."""
    root = Path(root)
    found: dict[Path, Path] = {}
    candidates = [root, *root.rglob("offline-run-*")]
    for path in candidates:
        if path.name.startswith("offline-run-") and path.is_dir() and not path.is_symlink():
            found.setdefault(path.resolve(), path)
    return sorted(found.values(), key=lambda p: (p.name, str(p)))


def read_runs(root: Path) -> list[OfflineRun]:
    """``read_run`` for every offline run directory under root that holds a ``.wandb`` file, in
    ``find_run_dirs`` order.  A resumed run (same id, later process) appears once per process."""
    runs = []
    for run_dir in find_run_dirs(root):
        if any(run_dir.glob("run-*.wandb")):
            runs.append(read_run(run_dir))
    return runs
