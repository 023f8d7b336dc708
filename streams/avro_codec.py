"""Avro single-object encoding (spec: ``C3 01`` marker + 8-byte little-endian CRC-64-AVRO
fingerprint of the writer schema's canonical form + Avro binary body).

Readers find the writer's schema by its fingerprint among the schemas shipped in
``streams/schemas`` (and older versions kept there), so no schema registry is needed.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import avro.io
import avro.schema

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
MAGIC = b"\xc3\x01"
HEADER_LEN = 10


class DecodeError(ValueError):
    """Bytes that are not a decodable single-object Avro record of a known schema."""


@dataclass(frozen=True)
class _Entry:
    name: str
    schema: avro.schema.RecordSchema
    fingerprint: bytes
    writer: avro.io.DatumWriter
    reader: avro.io.DatumReader
    defaults: dict[str, Any]


@lru_cache(maxsize=1)
def _registry() -> tuple[dict[str, _Entry], dict[bytes, _Entry]]:
    by_name: dict[str, _Entry] = {}
    by_fp: dict[bytes, _Entry] = {}
    # older versions first (schemas/old/): readers still decode them by fingerprint, while a
    # name maps to its current schema, which writers use
    for path in [*sorted((SCHEMA_DIR / "old").glob("*.avsc")), *sorted(SCHEMA_DIR.glob("*.avsc"))]:
        schema = avro.schema.parse(path.read_text())
        assert isinstance(schema, avro.schema.RecordSchema)
        fp = schema.fingerprint("CRC-64-AVRO")
        defaults = {f.name: f.default for f in schema.fields if f.has_default}
        entry = _Entry(schema.name, schema, fp, avro.io.DatumWriter(schema), avro.io.DatumReader(schema), defaults)
        by_name[schema.name] = entry
        by_fp[fp] = entry
    return by_name, by_fp


def schema_names() -> list[str]:
    return sorted(_registry()[0])


def fingerprint(schema_name: str) -> bytes:
    return _registry()[0][schema_name].fingerprint


def encode(schema_name: str, record: dict[str, Any]) -> bytes:
    """Encode `record` with the named schema; raises ValueError if it does not conform."""
    entry = _registry()[0][schema_name]
    missing = entry.defaults.keys() - record.keys()
    if missing:
        record = {**{k: entry.defaults[k] for k in missing}, **record}
    buf = io.BytesIO()
    buf.write(MAGIC)
    buf.write(entry.fingerprint)
    try:
        entry.writer.write(record, avro.io.BinaryEncoder(buf))
    except avro.errors.AvroTypeException as exc:
        raise ValueError(f"record does not match {schema_name}: {exc}") from exc
    return buf.getvalue()


def decode(data: bytes | None, expected: str | None = None) -> tuple[str, dict[str, Any]]:
    """Decode single-object bytes -> (schema name, record). Raises DecodeError with a reason."""
    if data is None or len(data) < HEADER_LEN:
        raise DecodeError(f"too short for Avro single-object encoding ({0 if data is None else len(data)} bytes)")
    if data[:2] != MAGIC:
        raise DecodeError(f"bad marker {data[:2].hex()} (expected c301: not Avro single-object encoded)")
    entry = _registry()[1].get(bytes(data[2:HEADER_LEN]))
    if entry is None:
        raise DecodeError(f"unknown writer schema fingerprint {data[2:HEADER_LEN].hex()}")
    if expected is not None and entry.name != expected:
        raise DecodeError(f"expected a {expected} record, got {entry.name}")
    buf = io.BytesIO(data)
    buf.seek(HEADER_LEN)
    try:
        record = entry.reader.read(avro.io.BinaryDecoder(buf))
    except Exception as exc:  # noqa: BLE001 - avro raises many types on truncated/corrupt bodies
        raise DecodeError(f"corrupt {entry.name} body: {type(exc).__name__}: {exc}") from exc
    if buf.tell() != len(data):
        raise DecodeError(f"{len(data) - buf.tell()} trailing bytes after a {entry.name} record")
    return entry.name, record


def schema_json(schema_name: str) -> str:
    return json.dumps(_registry()[0][schema_name].schema.to_json())
