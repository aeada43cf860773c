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


def split_problems(
    studies: dict[str, int],
    patients: dict[str, int],
    ratios: dict[str, float],
    seed: int,
    train_batch_size: int | None = None,
) -> list[str]:
    """What a patient-grouped split of this cohort leaves unusable, each naming the params keys that fix it:
    an empty split (hashing few patients into three ratios can leave one empty), a train split below one
    batch (training would stop). ``studies`` / ``patients``: per split name."""
    total = sum(patients.values())
    problems = []
    for name in SPLIT_NAMES:
        if studies.get(name, 0) == 0:
            problems.append(
                f"split {name} is empty ({total} patient(s) in all, split.{name}={ratios.get(name)}, "
                f"split.seed={seed}): add studies, or change split.seed / split.{name} in params.yaml"
            )
    n_train = studies.get("train", 0)
    if train_batch_size and 0 < n_train < train_batch_size:
        problems.append(
            f"split train has {n_train} studies, fewer than one batch of train.batch_size={train_batch_size}: "
            "training would stop; lower train.batch_size, raise split.train or add studies"
        )
    return problems
