"""A small reader of TensorFlow's checkpoint format (V2 tensor bundle), without TensorFlow.

A checkpoint ``<prefix>.index`` + ``<prefix>.data-0000i-of-0000n``:

- ``.index`` is a LevelDB-style SSTable. Its 48-byte footer holds two block handles (metaindex,
  index; varint offset + size) and the magic 0xdb4775248b80fb57. The index block maps the last
  key of each data block to that block's handle. A block is a run of prefix-compressed entries
  (varint shared, varint unshared, varint value length, key suffix, value) followed by a restart
  array (uint32 each, then their count); every block is followed by a 5-byte trailer (compression
  type, crc). TensorFlow writes bundles uncompressed.
- The entry with the empty key is a BundleHeaderProto; every other key is a variable name whose
  value is a BundleEntryProto: dtype (1), shape (2), shard_id (3), offset (4), size (5),
  crc32c (6, masked), slices (7). Tensors are raw little-endian bytes in the data shard.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_LEN = 48
BLOCK_TRAILER_LEN = 5

# tensorflow/core/framework/types.proto
_DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 5: np.int16, 6: np.int8, 9: np.int64,
           10: np.bool_, 17: np.uint16, 19: np.float16, 22: np.uint32, 23: np.uint64}


class CheckpointFormatError(ValueError):
    """The files are not a TensorFlow V2 checkpoint this reader understands."""


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise CheckpointFormatError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _proto_fields(buf: bytes) -> list[tuple[int, int | bytes]]:
    """Decode protobuf wire format into (field number, value) pairs (varint, fixed32/64, bytes)."""
    fields: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value = struct.unpack_from("<Q", buf, pos)[0]
            pos += 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value = buf[pos : pos + length]
            pos += length
        elif wire == 5:
            value = struct.unpack_from("<I", buf, pos)[0]
            pos += 4
        else:
            raise CheckpointFormatError(f"unsupported protobuf wire type {wire}")
        fields.append((number, value))
    return fields


def _block_entries(table: bytes, offset: int, size: int) -> list[tuple[bytes, bytes]]:
    block = table[offset : offset + size]
    if table[offset + size] != 0:
        raise CheckpointFormatError("compressed SSTable blocks are not supported")
    num_restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
    end = len(block) - 4 - 4 * num_restarts
    entries: list[tuple[bytes, bytes]] = []
    pos, key = 0, b""
    while pos < end:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        value_len, pos = _varint(block, pos)
        key = key[:shared] + block[pos : pos + unshared]
        pos += unshared
        entries.append((key, block[pos : pos + value_len]))
        pos += value_len
    return entries


def read_table(index_path: Path) -> dict[str, bytes]:
    """All key -> value pairs of an SSTable file."""
    table = index_path.read_bytes()
    if len(table) < FOOTER_LEN:
        raise CheckpointFormatError(f"{index_path} is too short for an SSTable")
    footer = table[-FOOTER_LEN:]
    if struct.unpack_from("<Q", footer, 40)[0] != TABLE_MAGIC:
        raise CheckpointFormatError(f"{index_path}: bad SSTable magic")
    _, pos = _varint(footer, 0)  # metaindex offset
    _, pos = _varint(footer, pos)  # metaindex size
    index_offset, pos = _varint(footer, pos)
    index_size, _ = _varint(footer, pos)
    out: dict[str, bytes] = {}
    for _, handle in _block_entries(table, index_offset, index_size):
        block_offset, hpos = _varint(handle, 0)
        block_size, _ = _varint(handle, hpos)
        for key, value in _block_entries(table, block_offset, block_size):
            out[key.decode("utf-8")] = value
    return out


@dataclass(frozen=True)
class BundleEntry:
    dtype: type
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc32c_masked: int | None


def parse_entry(value: bytes) -> BundleEntry:
    dtype_code, shape, shard, offset, size, crc = 0, (), 0, 0, 0, None
    for number, field in _proto_fields(value):
        if number == 1:
            dtype_code = int(field)  # type: ignore[arg-type]
        elif number == 2:
            dims = []
            for dim_no, dim in _proto_fields(field):  # type: ignore[arg-type]
                if dim_no == 2:  # TensorShapeProto.Dim
                    sizes = [v for n, v in _proto_fields(dim) if n == 1]  # type: ignore[arg-type]
                    dims.append(int(sizes[0]) if sizes else 0)
            shape = tuple(dims)
        elif number == 3:
            shard = int(field)  # type: ignore[arg-type]
        elif number == 4:
            offset = int(field)  # type: ignore[arg-type]
        elif number == 5:
            size = int(field)  # type: ignore[arg-type]
        elif number == 6:
            crc = int(field)  # type: ignore[arg-type]
        elif number == 7:
            raise CheckpointFormatError("sliced (partitioned) variables are not supported")
    if dtype_code not in _DTYPES:
        raise CheckpointFormatError(f"unsupported TensorFlow dtype code {dtype_code}")
    return BundleEntry(_DTYPES[dtype_code], shape, shard, offset, size, crc)


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE: list[int] | None = None


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), pure Python: fine for the few MB of a small checkpoint."""
    global _CRC_TABLE
    if _CRC_TABLE is None:
        _CRC_TABLE = _crc32c_table()
    table, crc = _CRC_TABLE, 0xFFFFFFFF
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def mask_crc(crc: int) -> int:
    """LevelDB/TensorFlow masked CRC: rotate right by 15 and add a constant."""
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


class CheckpointReader:
    """Read named tensors of a TF V2 checkpoint given its prefix (path without '.index')."""

    def __init__(self, prefix: str | Path) -> None:
        self.prefix = str(prefix)
        index_path = Path(self.prefix + ".index")
        if not index_path.is_file():
            raise FileNotFoundError(f"no checkpoint index at {index_path}")
        raw = read_table(index_path)
        header = dict(_proto_fields(raw.pop("", b"")))
        self.num_shards = int(header.get(1, 1))  # type: ignore[arg-type]
        if int(header.get(2, 0)) != 0:  # type: ignore[arg-type]
            raise CheckpointFormatError("big-endian checkpoints are not supported")
        self.entries = {name: parse_entry(value) for name, value in raw.items()}
        self._shards: dict[int, bytes] = {}

    def _shard(self, shard_id: int) -> bytes:
        if shard_id not in self._shards:
            path = Path(f"{self.prefix}.data-{shard_id:05d}-of-{self.num_shards:05d}")
            self._shards[shard_id] = path.read_bytes()
        return self._shards[shard_id]

    def names(self) -> list[str]:
        return sorted(self.entries)

    def tensor(self, name: str, verify_crc: bool = False) -> np.ndarray:
        entry = self.entries[name]
        raw = self._shard(entry.shard_id)[entry.offset : entry.offset + entry.size]
        if len(raw) != entry.size:
            raise CheckpointFormatError(f"{name}: data shard is truncated")
        if verify_crc and entry.crc32c_masked is not None and mask_crc(crc32c(raw)) != entry.crc32c_masked:
            raise CheckpointFormatError(f"{name}: crc32c mismatch")
        return np.frombuffer(raw, dtype=np.dtype(entry.dtype).newbyteorder("<")).reshape(entry.shape).copy()
