"""The shared word-type table (report_parsing.tokens): every classifier sees every word type, whether
it was registered before or after the type was first met, and documents read the same values."""

from __future__ import annotations

import numpy as np

from report_parsing.sections import detect_sections
from report_parsing.tokens import TYPE_TABLE, TokenView, WordTypeFilter


def test_classifier_registered_late_classifies_known_types() -> None:
    view = TokenView.from_text("Zyxwv qrstu zyxwv, effusion.")  # types learnt by the table now
    TYPE_TABLE.typed(view)
    late = WordTypeFilter(lambda word: word == "zyxwv")
    assert late.indices(view).tolist() == [0, 2]
    again = TokenView.from_text("QRSTU zyxwv")
    assert late.indices(again).tolist() == [1]
    length_column = TYPE_TABLE.register(len, np.int64)
    assert TYPE_TABLE.values(length_column, again).tolist() == [5, 5]


def test_new_word_types_after_registration() -> None:
    ends_in_q = WordTypeFilter(lambda word: word.endswith("q"))
    assert ends_in_q.indices(TokenView.from_text("aaq bbb")).tolist() == [0]
    assert ends_in_q.indices(TokenView.from_text("ccc ddqnever eeq ffq")).tolist() == [2, 3]


def test_ctrate_quote_starts_impression_only_after_sentence_end() -> None:
    text = 'Lungs are clear. " No acute finding. Size "large" noted.'
    sections = detect_sections(text)
    assert [s.name for s in sections] == ["findings", "impression"]
    assert text[sections[0].start : sections[0].end] == "Lungs are clear."
    assert text[sections[1].start :].lstrip().startswith('" No acute')
    assert [s.name for s in detect_sections('Size "large" noted and clear.')] == ["findings"]


def test_threads_share_the_table_safely() -> None:
    # the CLI's Prefect flow parses batches in threads: the shared table must never be seen half-updated
    from concurrent.futures import ThreadPoolExecutor

    from report_parsing.analyze import analyze_text

    texts = [
        f"Nodule{i}x in the lung{i}y; no effusion{i}z. Word{i}a{j} is clear. Calcified plaques in the aorta{j}."
        for i in range(40)
        for j in range(3)
    ]
    expected = [analyze_text(text, "ctrate4").to_dict() for text in texts]
    fresh = [text.replace("Word", "Fresh") for text in texts]  # word types the table has not seen
    expected_fresh = [analyze_text(text, "ctrate4").to_dict() for text in fresh]
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(lambda text: analyze_text(text, "ctrate4").to_dict(), texts))
    assert got == expected
    fresher = [text.replace("Word", "Newer") for text in texts]
    with ThreadPoolExecutor(max_workers=4) as pool:
        got_fresher = list(pool.map(lambda text: analyze_text(text, "ctrate4").to_dict(), fresher))
    assert [g["labels"] for g in got_fresher] == [e["labels"] for e in expected_fresh]
