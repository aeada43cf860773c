from __future__ import annotations

from core.anatomy_sets import CTRATE_LABELS, available_sets, load_anatomy_set


def test_ctrate4_matches_public_fvlm_code() -> None:
    ctrate4 = load_anatomy_set("ctrate4")
    assert ctrate4.anatomy_names == ("lung", "heart", "esophagus", "aorta")
    ids = ctrate4.class_ids()
    assert ids["lung"] == (10, 11, 12, 13, 14)
    assert ids["heart"] == (51, 61)
    assert ids["esophagus"] == (15,) and ids["aorta"] == (52,)
    assert len(ctrate4.scored_labels()) == 16
    assert set(ctrate4.label_anatomy) == set(CTRATE_LABELS)


def test_all_sets_load_and_map_every_label() -> None:
    for name in available_sets():
        anatomy_set = load_anatomy_set(name)
        table = anatomy_set.lookup_table()
        assert table.max() == len(anatomy_set.anatomies)
        for label in anatomy_set.scored_labels():
            negative, positive = anatomy_set.prompts[label]
            assert negative != positive
