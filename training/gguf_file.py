"""Read a GGUF file's fields and tensor table quickly, for the export and its tests.

gguf's GGUFReader builds a numpy view for every item of every field, so a 262k-token vocabulary
(Gemma 3) took it about 20 s. Here the header is parsed with `struct` over a memory map in well
under a second, and each tensor is a numpy view of its bytes in the same map (no copy).

    from training.gguf_file import read_gguf
    file = read_gguf("model.gguf")
    file.fields["tokenizer.ggml.tokens"].value      # a Field: (value, kind, item_kind)
    gguf.dequantize(file.tensors["token_embd.weight"].data, file.tensors["token_embd.weight"].kind)
"""
from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

_MAGIC = b"GGUF"
_FORMATS = {GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H",
            GGUFValueType.INT16: "<h", GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i",
            GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<?", GGUFValueType.UINT64: "<Q",
            GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d"}


class Field(NamedTuple):
    """A field as GGUFWriter.add_key_value takes it: `writer.add_key_value(key, *field)`."""
    value: Any
    kind: GGUFValueType
    item_kind: GGUFValueType | None = None  # an array's item type


@dataclass
class Tensor:
    shape: list[int]  # GGUF's order: the fastest-varying dimension first
    kind: GGMLQuantizationType
    data: np.ndarray  # uint8, one row of bytes per row of the tensor: what gguf.dequantize takes


@dataclass
class GGUFFile:
    fields: dict[str, Field]
    tensors: dict[str, Tensor]


class _Cursor:
    def __init__(self, buffer):
        self.buffer, self.offset = buffer, 0

    def take(self, fmt: str):
        (value,) = struct.unpack_from(fmt, self.buffer, self.offset)
        self.offset += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        length = self.take("<Q")
        self.offset += length
        return bytes(self.buffer[self.offset - length:self.offset]).decode("utf-8", errors="replace")

    def value(self, kind: GGUFValueType):
        if kind == GGUFValueType.STRING:
            return self.string()
        if kind == GGUFValueType.ARRAY:
            return self.array()[0]
        return self.take(_FORMATS[kind])

    def array(self) -> tuple[list, GGUFValueType]:
        item_kind, count = GGUFValueType(self.take("<I")), self.take("<Q")
        if item_kind in (GGUFValueType.STRING, GGUFValueType.ARRAY):
            return [self.value(item_kind) for _ in range(count)], item_kind
        dtype = np.dtype(_FORMATS[item_kind])
        items = np.frombuffer(self.buffer, dtype, count, self.offset).tolist()
        self.offset += dtype.itemsize * count
        return items, item_kind


def read_gguf(path: str | Path) -> GGUFFile:
    """Every field and every tensor of a GGUF file (version 2 or 3)."""
    with open(path, "rb") as handle:
        buffer = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    if buffer[:4] != _MAGIC:
        raise ValueError(f"{path}: not a GGUF file")
    cursor = _Cursor(buffer)
    cursor.offset = 4
    version, tensor_count, field_count = cursor.take("<I"), cursor.take("<Q"), cursor.take("<Q")
    if version < 2:
        raise ValueError(f"{path}: GGUF version {version} is not read here")
    fields = {}
    for _ in range(field_count):
        key, kind = cursor.string(), GGUFValueType(cursor.take("<I"))
        if kind == GGUFValueType.ARRAY:
            items, item_kind = cursor.array()
            fields[key] = Field(items, kind, item_kind)
        else:
            fields[key] = Field(cursor.value(kind), kind)
    return GGUFFile(fields, _tensors(buffer, cursor, tensor_count, fields))


def _tensors(buffer, cursor: _Cursor, count: int, fields: dict[str, Field]) -> dict[str, Tensor]:
    """The tensor table, each tensor's bytes viewed where the data section (aligned) holds them."""
    table = []
    for _ in range(count):
        name, dims = cursor.string(), cursor.take("<I")
        shape = [cursor.take("<Q") for _ in range(dims)]
        table.append((name, shape, GGMLQuantizationType(cursor.take("<I")), cursor.take("<Q")))
    alignment = fields["general.alignment"].value if "general.alignment" in fields else 32
    start = -(-cursor.offset // alignment) * alignment
    tensors = {}
    for name, shape, kind, offset in table:
        block, block_bytes = GGML_QUANT_SIZES[kind]
        rows, row_bytes = prod(shape) // shape[0], shape[0] // block * block_bytes
        data = np.frombuffer(buffer, np.uint8, rows * row_bytes, start + offset).reshape(rows, row_bytes)
        tensors[name] = Tensor(shape, kind, data)
    return tensors
