"""Reading report CSVs robustly: every row comes back, with a status instead of an exception."""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from pathlib import Path

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


class ReportsFileError(ValueError):
    """A reports file that cannot be used at all (missing, no header, missing columns)."""


@dataclass
class ReportRow:
    line: int  # 1-based line number of the row in the file (header = line 1)
    values: dict[str, str]
    malformed: str = ""  # why the row is malformed ("" = fine)


def read_report_rows(path: str | Path, required_columns: list[str]) -> tuple[list[str], list[ReportRow]]:
    """(header, rows) of a CSV file; raises ReportsFileError naming the file for file-level problems.

    Rows with a wrong number of fields are returned with ``malformed`` set; undecodable bytes are
    replaced (never a crash)."""
    path = Path(path)
    if not path.is_file():
        raise ReportsFileError(f"{path}: no such reports file")
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as handle:
        reader = csv.reader(handle)
        try:
            header = next(reader)
        except StopIteration:
            raise ReportsFileError(f"{path}: empty file (no header row)") from None
        except csv.Error as error:
            raise ReportsFileError(f"{path}: unreadable header: {error}") from None
        header = [name.strip() for name in header]
        missing = [name for name in required_columns if name not in header]
        if missing:
            raise ReportsFileError(
                f"{path}: missing column(s) {missing}; the file has {header} (name the columns with "
                "reports.id_column / reports.findings_column / reports.impression_column / reports.text_column)"
            )
        rows: list[ReportRow] = []
        while True:
            line = reader.line_num + 1
            try:
                fields = next(reader)
            except StopIteration:
                break
            except csv.Error as error:
                rows.append(ReportRow(line, {}, f"unparsable CSV row: {error}"))
                continue
            if not any(field.strip() for field in fields):
                continue  # blank line
            malformed = ""
            if len(fields) != len(header):
                malformed = f"{len(fields)} fields, header has {len(header)}"
            values = {name: (fields[i] if i < len(fields) else "") for i, name in enumerate(header)}
            rows.append(ReportRow(line, values, malformed))
    return header, rows
