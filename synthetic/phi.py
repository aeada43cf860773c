"""Planted fake PHI (deterministic): names, IDs, dates, institution. All values are invented."""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np

FIRST_NAMES = (
    "Alma",
    "Bruno",
    "Cecilia",
    "Dario",
    "Edith",
    "Fabian",
    "Greta",
    "Hugo",
    "Ilse",
    "Jonas",
    "Klara",
    "Lorenz",
    "Mira",
    "Nils",
    "Oda",
    "Pavel",
    "Quirin",
    "Rosa",
    "Sven",
    "Tilda",
    "Ulrik",
    "Vera",
    "Wim",
    "Xenia",
    "Yannick",
    "Zora",
)
LAST_NAMES = (
    "Abernathy",
    "Bellweather",
    "Castellan",
    "Drummond",
    "Everhart",
    "Fairbrook",
    "Galloway",
    "Hollister",
    "Ingleby",
    "Juniper",
    "Kettering",
    "Lindqvist",
    "Marchetti",
    "Northcott",
    "Oakenshaw",
    "Pemberton",
    "Quimby",
    "Rothwell",
    "Stanhope",
    "Thistlewood",
    "Underhill",
    "Vandermeer",
    "Whitcombe",
    "Yardley",
)
INSTITUTIONS = (
    "Saint Aurelia Imaging Center",
    "Riverbend Fictional Hospital",
    "Northfield Synthetic Clinic",
    "Harborview Phantom Institute",
    "Meadowlark County Hospital",
)
DOCTOR_TITLES = ("Dr.", "Dr.", "Prof. Dr.")


def _name(rng: np.random.Generator) -> tuple[str, str]:
    return str(rng.choice(FIRST_NAMES)), str(rng.choice(LAST_NAMES))


def patient_phi(seed: int, patient_index: int) -> dict[str, str]:
    """Identity of one (fake) patient: the same for all of that patient's studies."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(patient_index), 0x9A7]))
    first, last = _name(rng)
    birth = dt.date(1935, 1, 1) + dt.timedelta(days=int(rng.integers(0, 365 * 60)))
    return {
        "PatientName": f"{last}^{first}",
        "PatientNameText": f"{first} {last}",
        "PatientID": f"PID{int(rng.integers(10**7, 10**8))}",
        "PatientBirthDate": birth.strftime("%Y%m%d"),
        "PatientSex": str(rng.choice(["M", "F"])),
    }


def study_phi(rng: np.random.Generator, patient: dict[str, str]) -> dict[str, Any]:
    """Study-level PHI for one study of ``patient`` (DICOM tags + values planted in the report text)."""
    study_date = dt.date(2019, 1, 1) + dt.timedelta(days=int(rng.integers(0, 365 * 5)))
    prior_date = study_date - dt.timedelta(days=int(rng.integers(60, 900)))
    birth = dt.datetime.strptime(patient["PatientBirthDate"], "%Y%m%d").date()
    age = (study_date - birth).days // 365
    time = f"{int(rng.integers(7, 19)):02d}{int(rng.integers(0, 60)):02d}{int(rng.integers(0, 60)):02d}"
    referring_first, referring_last = _name(rng)
    operator_first, operator_last = _name(rng)
    reader_first, reader_last = _name(rng)
    title = str(rng.choice(DOCTOR_TITLES))
    return {
        **patient,
        "PatientAge": f"{age:03d}Y",
        "AccessionNumber": f"ACC{int(rng.integers(10**8, 10**9))}",
        "InstitutionName": str(rng.choice(INSTITUTIONS)),
        "StudyDate": study_date.strftime("%Y%m%d"),
        "StudyTime": time,
        "ReferringPhysicianName": f"{referring_last}^{referring_first}",
        "OperatorsName": f"{operator_last}^{operator_first}",
        "StudyID": f"{int(rng.integers(1000, 99999))}",
        "report_prior_date": prior_date.strftime("%d.%m.%Y"),
        "report_physician": f"{title} {reader_first} {reader_last}",
        "report_physician_name": f"{reader_first} {reader_last}",
    }


DICOM_PHI_FIELDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "AccessionNumber",
    "InstitutionName",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "OperatorsName",
    "StudyID",
    "PatientAge",
)


def searchable_values(phi: dict[str, Any], in_report: dict[str, bool]) -> list[str]:
    """Distinctive planted strings that must not survive de-identification (times are too generic)."""
    values = [
        phi["PatientID"],
        phi["AccessionNumber"],
        phi["InstitutionName"],
        phi["PatientBirthDate"],
        phi["StudyDate"],
        phi["PatientName"],
        phi["PatientNameText"],
        phi["ReferringPhysicianName"],
        phi["OperatorsName"],
    ]
    for key in ("PatientName", "ReferringPhysicianName", "OperatorsName"):
        values.append(phi[key].split("^")[0])  # surnames are distinctive; short first names are not
    if in_report.get("prior_date"):
        values.append(phi["report_prior_date"])
    if in_report.get("physician"):
        values.append(phi["report_physician_name"])
    return sorted(set(values))
