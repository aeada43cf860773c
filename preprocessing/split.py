"""Patient-level train/val/test split by a hash of the patient pseudonym.

Each patient gets a number in [0, 1) from sha256(seed, patient_id); the ratios cut [0, 1) into
train | val | test. So the split is deterministic, independent of input order and of which other
patients exist (adding studies never moves an existing patient), and all studies of one patient
land in the same split. ``patient_id`` is already a keyed pseudonym (core.privacy), so no salt here.
"""

from __future__ import annotations

import hashlib

SPLIT_NAMES: tuple[str, str, str] = ("train", "val", "test")


def patient_fraction(patient_id: str, seed: int = 0) -> float:
    """Uniform-looking number in [0, 1) fixed by (seed, patient_id)."""
    if not patient_id:
        raise ValueError("cannot split on an empty patient_id")
    digest = hashlib.sha256(f"fvlm-split:{seed}:{patient_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign_split(patient_id: str, train: float, val: float, test: float, seed: int = 0) -> str:
    """'train' | 'val' | 'test' for this patient under the given ratios (normalised to sum 1)."""
    total = train + val + test
    if total <= 0:
        raise ValueError("split ratios must not all be zero")
    fraction = patient_fraction(patient_id, seed)
    if fraction < train / total:
        return "train"
    if fraction < (train + val) / total:
        return "val"
    return "test"
