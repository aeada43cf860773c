"""Import a package while an optional dependency it would import eagerly is hidden (the start-up cost of a
command that never uses that dependency): the one mechanism behind ``report_parsing.pipeline
.import_spacy_without_torch`` and ``preprocessing.volume_writer.import_nibabel_without_pydicom``."""

from __future__ import annotations

import importlib
import sys
from types import ModuleType


def import_hiding(module: str, hidden: str) -> ModuleType:
    """``import MODULE`` with ``import HIDDEN`` failing (``ModuleNotFoundError``) for its duration; HIDDEN
    imports normally again afterwards. The caller checks that neither is imported yet: once HIDDEN is in
    ``sys.modules`` there is nothing to hide."""
    sys.modules[hidden] = None  # type: ignore[assignment]  # `import hidden` -> ModuleNotFoundError
    try:
        return importlib.import_module(module)
    finally:
        if hidden in sys.modules and sys.modules[hidden] is None:
            del sys.modules[hidden]
