"""Pseudonyms: one keyed hash shared by every stage, so study ids from images and reports match."""

from __future__ import annotations

import hashlib
import hmac


def pseudonym(value: str, salt: str, *, kind: str = "study", length: int = 16) -> str:
    """Stable pseudonym of ``value`` (e.g. a StudyInstanceUID) under a secret ``salt``.

    ``kind`` separates namespaces (a patient id and a study uid that happen to be equal do not
    collide); the result is ``<kind-prefix>_<hex>`` and reveals nothing without the salt.
    """
    if not value:
        raise ValueError("cannot pseudonymise an empty identifier")
    digest = hmac.new(salt.encode(), f"{kind}:{value.strip()}".encode(), hashlib.sha256).hexdigest()
    return f"{kind[:2]}_{digest[:length]}"
