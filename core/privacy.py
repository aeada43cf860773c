"""Pseudonyms: one keyed hash shared by every stage, so study ids from images and reports match."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


def pseudonym(value: str, salt: str, *, kind: str = "study", length: int = 16) -> str:
    """Stable pseudonym of ``value`` (e.g. a StudyInstanceUID) under a secret ``salt``.

    ``kind`` separates namespaces (a patient id and a study uid that happen to be equal do not
    collide); the result is ``<kind-prefix>_<hex>`` and reveals nothing without the salt.
    """
    if not value:
        raise ValueError("cannot pseudonymise an empty identifier")
    digest = hmac.new(salt.encode(), f"{kind}:{value.strip()}".encode(), hashlib.sha256).hexdigest()
    return f"{kind[:2]}_{digest[:length]}"


# ------------------------------------------------------------------------------------ identity map
# The one place that maps pseudonyms back to the source: written by `fvlm convert` (which reads the PHI),
# read by `fvlm lookup`. It lives outside every stage output (privacy.identity_map, default
# .fvlm-private/identity.sqlite at the project root: gitignored, folder 0700, file 0600), so it never
# reaches a DVC output, a shard, MLflow or Prefect; only whoever holds the salt and this file can answer
# "which study is st_...?". Schema: one row per pseudonym (studies and their series).
IDENTITY_COLUMNS: tuple[str, ...] = (
    "pseudonym",  # st_... (study) or se_... (series): the primary key
    "kind",  # study | series
    "study_id",  # the study's pseudonym (= pseudonym for a study row)
    "patient_pseudonym",  # pa_...
    "own_patient",  # 1: no PatientID, the study is its own patient (patient pseudonym from the study key)
    "study_key",  # the value hashed into study_id (StudyInstanceUID, or folder:<relative folder>)
    "folder",  # the study's folder relative to the raw DICOM root (POSIX)
    "study_instance_uid",
    "patient_id",  # the original PatientID ("" when missing)
    "accession_number",
    "series_instance_uid",  # series rows only
    "series_number",
    "salt_fingerprint",  # sha256(salt)[:16]: which salt made the pseudonym
)


@dataclass(frozen=True)
class IdentityRecord:
    """One pseudonym and what it stands for (PHI: lives only in the identity map)."""

    pseudonym: str
    kind: str
    study_id: str
    patient_pseudonym: str
    own_patient: bool
    study_key: str
    folder: str
    study_instance_uid: str
    patient_id: str
    accession_number: str
    salt_fingerprint: str
    series_instance_uid: str = ""
    series_number: int | None = None


def salt_fingerprint(salt: str) -> str:
    return hashlib.sha256(salt.encode()).hexdigest()[:16]


def _private_file(path: Path) -> None:
    """Create ``path``'s folder (0700) and the file itself (0600) before SQLite opens it."""
    if not path.parent.is_dir():
        path.parent.mkdir(parents=True, mode=0o700)
        os.chmod(path.parent, 0o700)  # mkdir's mode is masked by the umask
    if not path.exists():
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    os.chmod(path, 0o600)


def record_identities(path: str | os.PathLike[str], records: Iterable[IdentityRecord]) -> int:
    """Insert or replace ``records`` in the identity map at ``path``; returns how many were written."""
    import sqlite3

    target = Path(path)
    _private_file(target)
    rows = [tuple(_column_value(record, name) for name in IDENTITY_COLUMNS) for record in records]
    placeholders = ", ".join("?" for _ in IDENTITY_COLUMNS)
    with contextlib.closing(sqlite3.connect(target, timeout=30)) as connection, connection:
        connection.execute(
            f"CREATE TABLE IF NOT EXISTS identities ({', '.join(IDENTITY_COLUMNS)}, PRIMARY KEY (pseudonym))"
        )
        connection.executemany(
            f"INSERT OR REPLACE INTO identities ({', '.join(IDENTITY_COLUMNS)}) VALUES ({placeholders})", rows
        )
    for suffix in ("-journal", "-wal", "-shm"):  # SQLite side files hold the same PHI
        side = target.with_name(target.name + suffix)
        if side.exists():
            side.chmod(0o600)
    return len(rows)


def lookup_identities(path: str | os.PathLike[str], pseudonym_or_prefix: str) -> list[IdentityRecord]:
    """Rows for a study (st_), series (se_) or patient (pa_: all its studies) pseudonym; a pseudonym
    prefix of at least 8 characters matches too (messages sometimes shorten them)."""
    import sqlite3

    target = Path(path)
    if not target.is_file():
        raise FileNotFoundError(
            f"identity map not found: {target} (written by `fvlm convert` on this machine; privacy.identity_map)"
        )
    value = pseudonym_or_prefix.strip()
    column = "patient_pseudonym" if value.startswith("pa_") else "pseudonym"
    kind = "AND kind = 'study'" if column == "patient_pseudonym" else ""
    with contextlib.closing(sqlite3.connect(f"file:{target}?mode=ro", uri=True, timeout=30)) as connection:
        connection.row_factory = sqlite3.Row
        rows = connection.execute(
            f"SELECT * FROM identities WHERE {column} = ? {kind} ORDER BY pseudonym", (value,)
        ).fetchall()
        if not rows and len(value) >= 8:
            rows = connection.execute(
                f"SELECT * FROM identities WHERE {column} LIKE ? ESCAPE '\\' {kind} ORDER BY pseudonym",
                (value.replace("%", "").replace("_", "\\_") + "%",),
            ).fetchall()
    return [_record_of(row) for row in rows]


def _column_value(record: IdentityRecord, name: str) -> object:
    value = getattr(record, name)
    return int(value) if isinstance(value, bool) else value


def _record_of(row: object) -> IdentityRecord:
    values = {name: row[name] for name in IDENTITY_COLUMNS}  # type: ignore[index]
    values["own_patient"] = bool(values["own_patient"])
    return IdentityRecord(**values)
