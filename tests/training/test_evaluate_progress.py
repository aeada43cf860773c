"""evaluate's progress counts studies as they are embedded, out of the split's study count (issue #31:
a DataLoader over the iterable shard reader has no length, and the bar of batches said ``1/?``)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from torch.utils.data import DataLoader, IterableDataset

from core import progress as progress_module
from core.progress import progress_of_keys
from training.evaluation.evaluate import counted_studies


@pytest.fixture(autouse=True)
def _plain_lines(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("FVLM_PROGRESS", "plain")  # what a flow / CI log gets
    monkeypatch.setattr(progress_module, "_configured", "auto")
    caplog.set_level(logging.INFO, logger="fvlm.progress")


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "fvlm.progress"]


class _Crops(IterableDataset):
    """Like ShardDataset(mode="eval", eval_mode="anatomy"): one row per study, several crops per row."""

    def __init__(self, studies: int, crops: int) -> None:
        super().__init__()
        self.studies, self.crops = studies, crops

    @property
    def num_rows(self) -> int:
        return self.studies

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for s in range(self.studies):
            for k in range(self.crops):
                yield {"study_id": f"st_{s}", "crop_anatomy": k}


def _collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    return {"study_id": [sample["study_id"] for sample in samples]}


def test_evaluate_counts_studies_out_of_the_splits_total(caplog: pytest.LogCaptureFixture) -> None:
    loader = DataLoader(_Crops(studies=5, crops=3), batch_size=4, collate_fn=_collate)
    with pytest.raises(TypeError):
        len(loader)  # why counting batches could only say "?"
    seen: list[int] = []
    batches = counted_studies(loader, "evaluate: val")
    for batch in batches:
        seen.append(len(batch["study_id"]))
    assert sum(seen) == 15  # every crop passed through, in order
    assert _lines(caplog)[-1].startswith("evaluate: val: 5/5 studies in ")


def test_studies_count_when_their_first_crop_is_done_and_only_once(caplog: pytest.LogCaptureFixture) -> None:
    batches = [{"study_id": ["a", "a", "b"]}, {"study_id": ["b", "c"]}, {"study_id": ["c", "c"]}]
    counted = progress_of_keys(batches, "evaluate: test", "studies", lambda b: b["study_id"], every_items=1)
    counts = []
    for _ in counted:
        counts.append([line.split(": ")[2].split()[0] for line in _lines(caplog)])
    # a list of batches: the total is its distinct studies, read up front; a line per new study
    assert counts[-1] == ["2/3"]  # after the 2nd batch is handed out, the first one is done (a, b)
    assert _lines(caplog)[-1].startswith("evaluate: test: 3/3 studies in ")  # the closing line, exact
