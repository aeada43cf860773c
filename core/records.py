"""Arrow schemas derived from record dataclasses: a manifest's columns are declared once, as the record's
fields (name, order, type), and the Parquet schema follows from them.

Python type -> Arrow type (:data:`ARROW_TYPES`); ``X | None`` is the type of ``X`` (every column is
nullable); ``list[X]`` / ``tuple[X, ...]`` a list of ``X``'s type. ``Int32`` / ``Float32`` mark the
narrow columns. A field with ``metadata=NOT_STORED`` is no column (run-time only state).
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from typing import Annotated, Any, Union, get_args, get_origin, get_type_hints

Int32 = Annotated[int, "int32"]
Float32 = Annotated[float, "float32"]
NOT_STORED: Mapping[str, bool] = types.MappingProxyType({"arrow_column": False})

# annotation -> name of the pyarrow type factory
ARROW_TYPES: dict[Any, str] = {
    str: "string",
    int: "int64",
    float: "float64",
    bool: "bool_",
    Int32: "int32",
    Float32: "float32",
}


def arrow_type(annotation: Any) -> Any:
    """The pyarrow type of one field annotation (see the module docstring)."""
    import pyarrow as pa

    if annotation in ARROW_TYPES:
        return getattr(pa, ARROW_TYPES[annotation])()
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, types.UnionType):
        members = [arg for arg in args if arg is not type(None)]
        if len(members) == 1:
            return arrow_type(members[0])
    elif origin is list and len(args) == 1:
        return pa.list_(arrow_type(args[0]))
    elif origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return pa.list_(arrow_type(args[0]))
    raise TypeError(f"{annotation!r}: no Arrow column type for it (core.records.ARROW_TYPES lists the known ones)")


def arrow_fields(record_type: type, prefix: str = "") -> list[tuple[str, Any]]:
    """(column name, pyarrow type) of each stored field of the dataclass ``record_type``, in field order."""
    hints = get_type_hints(record_type, include_extras=True)
    return [
        (prefix + item.name, arrow_type(hints[item.name]))
        for item in dataclasses.fields(record_type)
        if item.metadata.get("arrow_column", True)
    ]


def arrow_schema(record_type: type, metadata: Mapping[bytes, bytes] | None = None) -> Any:
    """The pyarrow schema of ``record_type``'s stored fields."""
    import pyarrow as pa

    return pa.schema(arrow_fields(record_type), metadata=dict(metadata) if metadata else None)
