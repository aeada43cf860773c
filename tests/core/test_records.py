"""core.records: Arrow schemas derived from record dataclasses (the type table, NOT_STORED, errors)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa
import pytest

from core.records import NOT_STORED, Float32, Int32, arrow_fields, arrow_schema


@dataclass
class _Record:
    name: str
    count: int
    small: Int32
    ratio: float
    narrow: Float32 | None
    flag: bool
    sizes: list[Int32]
    values: tuple[float, ...]
    tags: list[str] | None = None
    runtime: float = field(default=0.0, metadata=NOT_STORED)


def test_field_types_map_to_arrow_types_in_field_order() -> None:
    schema = arrow_schema(_Record, metadata={b"k": b"v"})
    expected = pa.schema(
        [
            ("name", pa.string()),
            ("count", pa.int64()),
            ("small", pa.int32()),
            ("ratio", pa.float64()),
            ("narrow", pa.float32()),
            ("flag", pa.bool_()),
            ("sizes", pa.list_(pa.int32())),
            ("values", pa.list_(pa.float64())),
            ("tags", pa.list_(pa.string())),
        ],
        metadata={b"k": b"v"},
    )
    assert schema.equals(expected, check_metadata=True)
    assert [name for name, _ in arrow_fields(_Record, prefix="lung_")][:2] == ["lung_name", "lung_count"]


def test_a_type_without_an_arrow_column_type_is_a_clear_error() -> None:
    @dataclass
    class Bad:
        payload: dict[str, int]

    with pytest.raises(TypeError, match="no Arrow column type"):
        arrow_schema(Bad)
