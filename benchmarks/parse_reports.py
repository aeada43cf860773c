"""Speed of the report parser: reports / s on one core, against bare spaCy tokenization of the same
texts (the framework's ceiling: every spaCy pipeline pays at least the tokenizer).

    .venv/bin/python benchmarks/parse_reports.py [--reports 10000] [--rounds 3] [--negspacy] [--command-reports 1600]

Input: the 800 CT-CLIP labelled CT-RATE reports (../shared/data, CC BY-NC-SA; read, never copied).
Three measurements, both sides measured alike:

* **steady state** (the issue's definition): the 800 reports repeated to ``--reports``, caches warm
  (spaCy's tokenizer cache and vocabulary; the parser's sentence memo and word-type table);
* **distinct**: the same, each copy with one appended sentence holding a serial number never seen
  before, so every report brings one unseen sentence and one unseen word (in a real cohort a report's
  own measurements do that);
* **cold first pass**: each round a fresh ``spacy.blank("en")`` and a fresh parser with every memo
  forgotten (``report_parsing.pipeline.forget_everything``), over the 800 reports once: what
  unseen reports cost before their sentences repeat (the sentence memo's hit rate is printed).

Runs alternate (tokenizer, parser, tokenizer, parser ...) and the best round of each is kept, so a
busy machine hurts both sides alike. ``--negspacy`` also times the
maintained-component alternative (EntityRuler for the finding terms + negspacy's NegEx) as a peer.

Then the **whole command path** (``--command-reports`` reports, 0 to skip): a CSV (in a temporary folder,
deleted after) of the 800 reports and a second copy each with one unseen sentence, a planted person name
(tests/report_parsing/name_plants.py) in ``--plant-share`` of them, through everything ``fvlm
parse-reports`` does -- CSV reading, record preparation (id pseudonyms, English check, the PHI rules and the
NER name detector), parsing, both Parquet tables -- against the peer ``spacy.blank("en")`` + sentencizer over
the same CSV's texts:

* **steady**: ``run_parse_reports`` in this process, repeated (caches and the NER model warm);
* **cold**: ``fvlm parse-reports`` as a fresh process (interpreter, imports, model loads included), its CPU
  time from ``getrusage``; the peer as a fresh process reading the CSV too.

It also counts the planted names left in the written studies table (must be 0), and prints where the NER
model runs: the sentences the candidate filter marks, the few of them it reads, and the filter's recall on the
planted name words the PHI rules leave.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = Path(os.environ.get("FVLM_SHARED_DATA", REPO.parent / "shared" / "data"))
TRAIN_CSV = SHARED / "ct_clip" / "text_classifier" / "data" / "train.csv"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reports", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--negspacy", action="store_true", help="also time EntityRuler + negspacy NegEx")
    parser.add_argument("--command-reports", type=int, default=1600, help="whole-command rows (0: skip)")
    parser.add_argument("--plant-share", type=float, default=0.25, help="share of command rows with a planted name")
    args = parser.parse_args(argv)
    if not TRAIN_CSV.is_file():
        print(f"benchmark input not found: {TRAIN_CSV}", file=sys.stderr)
        return 1
    import pandas as pd
    import spacy

    from report_parsing.pipeline import USER_DATA_KEY, build_pipeline, forget_everything
    from report_parsing.sentence_cache import sentence_cache_stats

    base = pd.read_csv(TRAIN_CSV)["report_text"].astype(str).tolist()
    texts = (base * (args.reports // len(base) + 1))[: args.reports]
    tokenizer_only = spacy.blank("en")
    parser_nlp = build_pipeline("ctrate4")
    list(parser_nlp.pipe(texts[:200]))  # warm caches (word-type tables, compiled expressions)

    def tokenize(batch: list[str]) -> int:
        return sum(1 for _ in tokenizer_only.pipe(batch, batch_size=256))

    def parse(batch: list[str]) -> int:
        return sum(1 for doc in parser_nlp.pipe(batch, batch_size=256) if doc.user_data[USER_DATA_KEY] is not None)

    chars = sum(map(len, texts)) / len(texts)
    print(
        f"{len(base)} CT-RATE reports (mean {chars:.0f} characters), 1 process, best of {args.rounds} alternating"
        f" rounds (load average {os.getloadavg()[0]:.1f})"
    )
    print("                                    wall-clock      CPU time")
    tok = _compare(
        f"steady state: {len(texts)} reports ({len(base)} repeated; caches warm)",
        [(lambda: tokenize, texts)] * args.rounds,
        [(lambda: parse, texts)] * args.rounds,
    )

    # every copy gets one sentence (and one word) nobody has seen: the memo and the vocabulary miss once
    # per report, as a report's own measurements make them miss in a real cohort
    def distinct(round_number: int) -> list[str]:
        return [f"{text} Series {round_number * len(texts) + i + 1} was reviewed." for i, text in enumerate(texts)]

    _compare(
        f"distinct: the same {len(texts)} reports, each with one unseen sentence and word",
        [(lambda: tokenize, distinct(2 * r)) for r in range(args.rounds)],
        [(lambda: parse, distinct(2 * r + 1)) for r in range(args.rounds)],
    )

    # cold: fresh pipelines, every memo forgotten, each round (set up outside the timing)
    def fresh_tokenizer():
        nlp = spacy.blank("en")
        return lambda batch: sum(1 for _ in nlp.pipe(batch, batch_size=256))

    def fresh_parser():
        forget_everything()
        nlp = build_pipeline("ctrate4")
        return lambda batch: sum(1 for _ in nlp.pipe(batch, batch_size=256))

    _compare(
        f"cold first pass: the {len(base)} reports once, fresh pipelines, memos forgotten",
        [(fresh_tokenizer, base)] * args.rounds,
        [(fresh_parser, base)] * args.rounds,
    )
    print(f"(cold sentence memo hit rate: {sentence_cache_stats()['hit_rate']:.2f})")
    if args.negspacy:
        sample = texts[:1000]
        negex_nlp = _negspacy_pipeline()

        def negex(batch: list[str]) -> int:
            return sum(1 for _ in negex_nlp.pipe(batch, batch_size=256))

        rate = max(_rates(lambda: negex, sample)[0] for _ in range(2))
        print(
            f"EntityRuler + negspacy NegEx     : {rate:9.0f} reports/s  (ratio to tokenizer {rate / tok:.2f};"
            f" entities + negation only, no sections/anatomy/labels)"
        )
    if args.command_reports > 0:
        _whole_command(base, args.command_reports, args.plant_share, args.rounds)
    return 0


def _command_texts(base: list[str], count: int, plant_share: float) -> tuple[list[str], list]:
    """``count`` held-out-style texts: the reports, then copies with one unseen sentence each; a planted
    name in ``plant_share`` of them (seeded). Returns (texts, plants)."""
    import random

    from tests.report_parsing.name_plants import plant

    rng = random.Random(0)
    texts = [
        base[i % len(base)] if i < len(base) else f"{base[i % len(base)]} Series {i} was reviewed."
        for i in range(count)
    ]
    plants = []
    for index in sorted(rng.sample(range(count), int(count * plant_share))):
        planted = plant(texts[index], rng)
        texts[index] = planted.text
        plants.append(planted)
    return texts, plants


def _write_csv(path: Path, texts: list[str]) -> None:
    import csv

    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["study_key", "report_text"])
        writer.writerows([f"bench_{i:06d}", text] for i, text in enumerate(texts))


_PEER_SCRIPT = """
import csv, sys
import spacy
nlp = spacy.blank("en")
nlp.add_pipe("sentencizer")
with open(sys.argv[1], newline="") as handle:
    texts = [row["report_text"] for row in csv.DictReader(handle)]
print(sum(1 for doc in nlp.pipe(texts, batch_size=256) if len(doc) >= 0))
"""


def _child_cpu(command: list[str], cwd: Path) -> tuple[float, float]:
    """(wall s, CPU s of the child: user + system) of one fresh process."""
    import resource
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(REPO), "FVLM_NO_FLOWS": "1"}
    env.pop("PREFECT_API_URL", None)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = time.perf_counter()
    subprocess.run(command, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - wall
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _whole_command(base: list[str], count: int, plant_share: float, rounds: int) -> None:
    import re
    import shutil
    import tempfile

    import pyarrow.parquet as pq
    import spacy

    from core import layout
    from report_parsing.tables import ParseOptions, ParseReportsJob, run_parse_reports

    texts, plants = _command_texts(base, count, plant_share)
    work = Path(tempfile.mkdtemp(prefix="fvlm-bench-parse-"))
    try:
        csv_path = work / "reports.csv"
        _write_csv(csv_path, texts)
        shutil.copy(REPO / "params.yaml", work / "params.yaml")
        options = ParseOptions(
            id_column="study_key", text_column="report_text", findings_column=None, impression_column=None
        )
        job = ParseReportsJob(csv_path, work / "out" / "reports.parquet", options)
        peer_nlp = spacy.blank("en")
        peer_nlp.add_pipe("sentencizer")

        def peer() -> int:
            from report_parsing.io import read_report_rows

            _, rows = read_report_rows(csv_path, ["study_key", "report_text"])
            return sum(1 for _ in peer_nlp.pipe((row.values["report_text"] for row in rows), batch_size=256))

        def command() -> int:
            return len(run_parse_reports(job).records)

        command()  # warm: caches, the NER model, imports
        steady_peer, steady_command = [], []
        for _ in range(rounds):
            steady_peer.append(_rates(lambda: peer, None))
            steady_command.append(_rates(lambda: command, None))
        left = 0
        studies = pq.read_table(layout.reports_studies_path(job.out_parquet), columns=["report_text"])
        written = studies.column("report_text").to_pylist()
        for planted in plants:
            index = texts.index(planted.text)
            left += any(re.search(rf"\b{re.escape(name)}\b", written[index]) for name in (planted.first, planted.last))
        cold_peer, cold_command = [], []
        for _ in range(rounds):
            cold_peer.append(_child_cpu([sys.executable, "-c", _PEER_SCRIPT, str(csv_path)], work))
            cold_command.append(
                _child_cpu(
                    [
                        sys.executable,
                        "-m",
                        "fvlm.cli",
                        "parse-reports",
                        str(csv_path),
                        str(work / "cold" / "r.parquet"),
                        "--id-column",
                        "study_key",
                        "--text-column",
                        "report_text",
                    ],
                    work,
                )
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"whole command: {count} held-out-style reports (800 + copies with one unseen sentence), "
        f"{len(plants)} with a planted name; de-identification on (rules + NER names)"
    )
    print("                                    wall-clock      CPU time")
    for title, peer_rates, command_rates in (
        ("steady (in process, warm)", steady_peer, steady_command),
        (
            "cold (fresh process each)",
            [(count / w, count / c) for w, c in cold_peer],
            [(count / w, count / c) for w, c in cold_command],
        ),
    ):
        p_wall, p_cpu = max(r[0] for r in peer_rates), max(r[1] for r in peer_rates)
        c_wall, c_cpu = max(r[0] for r in command_rates), max(r[1] for r in command_rates)
        print(title)
        print(f"  spaCy blank('en') + sentencizer  : {p_wall:9.0f} /s   {p_cpu:9.0f} /s   reports")
        print(f"  fvlm parse-reports (whole)       : {c_wall:9.0f} /s   {c_cpu:9.0f} /s   reports")
        print(f"  ratio command / peer             : {c_wall / p_wall:9.2f}      {c_cpu / p_cpu:9.2f}")
    print(f"planted names left in the studies table: {left} of {len(plants)} plants")
    _candidate_filter(texts, plants)


def _candidate_filter(texts: list[str], plants: list) -> None:
    """Where the name detector's model runs: the sentences the candidate filter marks, those of them no cue
    rule explains (only these reach the NER model), and the filter's recall on the planted name words the
    PHI rules leave (a word outside every candidate sentence is one the model never sees)."""
    import re

    from report_parsing.names import candidate_sentences, model_sentence_counts
    from report_parsing.phi import scrub_phi

    ruled = [scrub_phi(text, names=False).text for text in texts]
    sentences = sum(len(re.findall(r"[.;?!\n]+", text)) + 1 for text in ruled)
    marked, model = model_sentence_counts(ruled)
    words = kept = 0
    position = {text: index for index, text in enumerate(texts)}
    for planted in plants:
        text = ruled[position[planted.text]]
        spans = candidate_sentences(text)
        for name in (planted.first, planted.last):
            for match in re.finditer(rf"\b{re.escape(name)}\b", text):
                words += 1
                kept += any(a <= match.start() and match.end() <= b for a, b in spans)
    print(
        f"candidate filter: {marked} of ~{sentences} sentences marked ({marked / len(texts):.2f} per report), "
        f"{model} read by the NER model; recall on the {words} planted name words the rules leave: "
        f"{kept}/{words} = {kept / max(words, 1):.3f}"
    )


def _rates(prepare, texts: list[str] | None) -> tuple[float, float]:
    """(reports per wall-clock second, reports per CPU second of this process) of the function
    ``prepare()`` returns (its setup is not timed; ``texts`` None: it takes none): on a shared machine the
    CPU-time rate is the one other processes disturb least."""
    function = prepare()
    wall, cpu = time.perf_counter(), time.process_time()
    count = function() if texts is None else function(texts)
    return count / (time.perf_counter() - wall), count / (time.process_time() - cpu)


def _compare(title: str, tokenizer_runs: list, parser_runs: list) -> float:
    """Alternate tokenizer and parser runs (``(prepare, texts)`` pairs, see :func:`_rates`), keep the
    best of each, print the block; returns the tokenizer's best wall-clock rate."""
    tokenizer_rates, parser_rates = [], []
    for (prepare_tokenizer, tokenizer_texts), (prepare_parser, parser_texts) in zip(
        tokenizer_runs, parser_runs, strict=False
    ):
        tokenizer_rates.append(_rates(prepare_tokenizer, tokenizer_texts))
        parser_rates.append(_rates(prepare_parser, parser_texts))
    tok, full = max(r[0] for r in tokenizer_rates), max(r[0] for r in parser_rates)
    tok_cpu, full_cpu = max(r[1] for r in tokenizer_rates), max(r[1] for r in parser_rates)
    print(title)
    print(f"  spaCy blank('en') tokenizer only : {tok:9.0f} /s   {tok_cpu:9.0f} /s   reports")
    print(f"  fvlm report parser (full)        : {full:9.0f} /s   {full_cpu:9.0f} /s   reports")
    print(f"  ratio parser / tokenizer         : {full / tok:9.2f}      {full_cpu / tok_cpu:9.2f}")
    return tok


def _negspacy_pipeline():
    """The maintained-component peer: finding terms as EntityRuler phrase patterns + negspacy NegEx."""
    import spacy
    from negspacy.negation import Negex  # noqa: F401  (registers the "negex" factory)

    from core.anatomy_sets import CTRATE_LABELS

    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    ruler = nlp.add_pipe("entity_ruler", config={"phrase_matcher_attr": "LOWER"})
    terms = [label.lower() for label in CTRATE_LABELS] + [
        "effusion",
        "nodule",
        "nodules",
        "atelectasis",
        "consolidation",
        "ground glass",
        "calcification",
        "lymph node",
        "lymph nodes",
        "catheter",
        "sequelae",
        "opacity",
        "hernia",
        "emphysema",
        "bronchiectasis",
    ]
    ruler.add_patterns([{"label": "FINDING", "pattern": term} for term in terms])
    nlp.add_pipe("negex", config={"chunk_prefix": ["no"]})
    return nlp


if __name__ == "__main__":
    sys.exit(main())
