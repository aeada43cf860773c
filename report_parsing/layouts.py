"""Which columns of a reports CSV hold the id and the text: the configured layout or a known one.

=========================  ==============  ====================================  ===========================
layout                     id column       text                                  where it comes from
=========================  ==============  ====================================  ===========================
configured                 reports.id_     reports.findings_column +             params.yaml ``reports:`` (the
                           column          reports.impression_column, or         demo's reports.csv:
                                           reports.text_column                   study_key, Findings, Impression)
CT-RATE reports            VolumeName      Findings_EN + Impressions_EN          CT-RATE radiology_text_reports
                                                                                 CSVs (also ClinicalInformation_EN,
                                                                                 Technique_EN, not parsed)
CT-CLIP text classifier    AccessionNo     report_text (Findings + Impression)   CT-CLIP text_classifier/data/*.csv
=========================  ==============  ====================================  ===========================

:func:`detect_layout` takes the first whose columns are all in the header, else raises
``ReportsFileError`` naming the file's columns and what each layout needs.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from report_parsing.io import ReportsFileError


@dataclass(frozen=True)
class ReportLayout:
    name: str
    id_column: str
    findings_column: str | None = None
    impression_column: str | None = None
    text_column: str | None = None  # wins over findings / impression

    def columns(self) -> list[str]:
        text = (
            [self.text_column] if self.text_column else [c for c in (self.findings_column, self.impression_column) if c]
        )
        return [self.id_column, *text]

    def describe(self) -> str:
        if self.text_column:
            return f"{self.name}: id {self.id_column}, text {self.text_column}"
        text = " + ".join(c for c in (self.findings_column, self.impression_column) if c)
        return f"{self.name}: id {self.id_column}, text {text}"


CTRATE_REPORTS = ReportLayout("CT-RATE reports", "VolumeName", "Findings_EN", "Impressions_EN")
CTCLIP_CLASSIFIER = ReportLayout("CT-CLIP text classifier", "AccessionNo", text_column="report_text")
KNOWN_LAYOUTS: tuple[ReportLayout, ...] = (CTRATE_REPORTS, CTCLIP_CLASSIFIER)


def read_header(path: str | Path) -> list[str]:
    """The header row of a CSV file (names stripped), as :func:`report_parsing.io.read_report_rows` reads it."""
    path = Path(path)
    if not path.is_file():
        raise ReportsFileError(f"{path}: no such reports file")
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as handle:
        try:
            return [name.strip() for name in next(csv.reader(handle))]
        except StopIteration:
            raise ReportsFileError(f"{path}: empty file (no header row)") from None
        except csv.Error as error:
            raise ReportsFileError(f"{path}: unreadable header: {error}") from None


def detect_layout(path: str | Path, configured: ReportLayout) -> ReportLayout:
    """The configured layout when its columns are in the header, else the first known layout that fits."""
    header = read_header(path)
    for layout in (configured, *KNOWN_LAYOUTS):
        if all(column in header for column in layout.columns()):
            return layout
    expected = "; ".join(f"{layout.describe()}" for layout in (configured, *KNOWN_LAYOUTS))
    raise ReportsFileError(
        f"{path}: no known reports layout fits its columns {header}; expected one of: {expected} "
        "(or name the columns with --id-column and --text-column / --findings-column --impression-column)"
    )
