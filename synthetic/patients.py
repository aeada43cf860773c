"""Which synthetic studies share a patient: follow-up studies belong to the patient of study i-1."""

from __future__ import annotations

import numpy as np

FOLLOW_UP_PROBABILITY = 0.15


def is_follow_up(seed: int, index: int) -> bool:
    if index == 0:
        return False
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(index), 0xF011]))
    return bool(rng.random() < FOLLOW_UP_PROBABILITY)


def patient_index(seed: int, index: int) -> int:
    """The first study of this study's patient (follow-up studies share the patient of study i-1)."""
    while is_follow_up(seed, index):
        index -= 1
    return index
