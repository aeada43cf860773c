"""Optional LLM decomposition backend: per-anatomy text from an OpenAI-compatible chat endpoint.

Off by default (``ParseOptions.llm_endpoint`` / ``fvlm parse-reports --llm-endpoint URL --llm-model NAME``;
for sites with a GPU serving a model, e.g. vLLM or llama.cpp's server). Per parsed report, one
``POST {endpoint}/chat/completions`` asks for a JSON object ``{anatomy: text}`` over the anatomy set's
names, copying the report's own sentences. The answer is **validated** before it is used:

* a JSON object whose keys are anatomy names of the set (``other`` allowed) and whose values are strings;
* every value is taken from the report: at least :data:`MIN_COPIED_SHARE` of its tokens occur in the
  report text (a rewritten or invented finding fails).

A report whose request fails or whose answer does not validate keeps the rule-based text (per report;
the summary counts them). The abnormal flags and the 18 labels always stay the rules' (the LLM only
places text); an anatomy the answer leaves out reads fVLM's ``{anatomy} shows no significant
abnormalities.``.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from dataclasses import dataclass
from typing import Any

from report_parsing.decomposition import AnatomyText, normal_template

MIN_COPIED_SHARE = 0.9
_TOKEN = re.compile(r"[a-z0-9]+")

PROMPT = (
    "You split a radiology report into the text about each anatomy. Anatomies: {names}. "
    "Answer with one JSON object whose keys are those anatomy names (leave out an anatomy the report does not "
    "describe) and whose values copy the report's own sentences or clauses about it, unchanged. Put "
    'text about other organs under "other". No explanations.'
)


class LLMAnswerError(ValueError):
    """An answer that cannot be used (the report then keeps the rule-based text)."""


@dataclass(frozen=True)
class LLMBackend:
    endpoint: str  # base URL of an OpenAI-compatible API, e.g. http://127.0.0.1:8000/v1
    model: str
    timeout_s: float = 60.0
    api_key: str | None = None

    def ask(self, report_text: str, anatomy_names: tuple[str, ...]) -> str:
        """The model's answer (message content) for one report."""
        body = {
            "model": self.model,
            "temperature": 0,
            "response_format": {"type": "json_object"},
            "messages": [
                {"role": "system", "content": PROMPT.format(names=", ".join(anatomy_names))},
                {"role": "user", "content": report_text},
            ],
        }
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(
            self.endpoint.rstrip("/") + "/chat/completions", json.dumps(body).encode(), headers, method="POST"
        )
        host = urllib.parse.urlsplit(self.endpoint).hostname or ""
        # a server on this machine is never reached through an HTTP(S)_PROXY of the environment
        handlers = [urllib.request.ProxyHandler({})] if host in ("127.0.0.1", "localhost", "::1") else []
        opener = urllib.request.build_opener(*handlers)
        with opener.open(request, timeout=self.timeout_s) as response:
            payload = json.loads(response.read().decode("utf-8"))
        try:
            return str(payload["choices"][0]["message"]["content"])
        except (KeyError, IndexError, TypeError) as error:
            raise LLMAnswerError(f"not a chat completion: {str(payload)[:80]}") from error


def _tokens(text: str) -> Counter[str]:
    return Counter(_TOKEN.findall(text.lower()))


def validated_texts(answer: str, report_text: str, anatomy_names: tuple[str, ...]) -> dict[str, str]:
    """anatomy (or ``other``) -> text of a valid answer; raises :class:`LLMAnswerError` otherwise."""
    content = answer.strip()
    if content.startswith("```"):  # a fenced block
        content = content.strip("`").removeprefix("json").strip()
    try:
        raw = json.loads(content)
    except json.JSONDecodeError as error:
        raise LLMAnswerError(f"not JSON: {error}") from error
    if not isinstance(raw, dict):
        raise LLMAnswerError(f"expected a JSON object, got {type(raw).__name__}")
    allowed = {*anatomy_names, "other"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise LLMAnswerError(f"keys outside the anatomy set: {unknown}")
    report_tokens = _tokens(report_text)
    texts: dict[str, str] = {}
    for name, value in raw.items():
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            value = " ".join(value)
        if not isinstance(value, str):
            raise LLMAnswerError(f"{name}: expected text, got {type(value).__name__}")
        value = value.strip()
        if not value:
            continue
        tokens = _tokens(value)
        copied = sum((tokens & report_tokens).values()) / max(1, sum(tokens.values()))
        if copied < MIN_COPIED_SHARE:
            raise LLMAnswerError(f"{name}: only {copied:.0%} of its words are in the report")
        texts[name] = value
    return texts


def llm_anatomy_texts(
    backend: LLMBackend, report_text: str, anatomy_names: tuple[str, ...], anatomy_abnormal: list[bool]
) -> list[AnatomyText]:
    """Per anatomy (+ ``other``) text from the backend, abnormal flags from the rules; raises
    :class:`LLMAnswerError` / ``OSError`` when the report must keep the rule-based text."""
    texts = validated_texts(backend.ask(report_text, anatomy_names), report_text, anatomy_names)
    out = []
    for index, name in enumerate((*anatomy_names, "other")):
        text = texts.get(name)
        abnormal = bool(anatomy_abnormal[index]) if index < len(anatomy_names) else False
        if text is None:
            out.append(AnatomyText(normal_template(name) if index < len(anatomy_names) else "", abnormal, False))
        else:
            out.append(AnatomyText(text, abnormal, True))
    return out


def apply_llm(records: list[Any], backend: LLMBackend, anatomy_set_name: str) -> tuple[int, int]:
    """Set ``record.anatomy_texts`` from the backend for parsed records without one (in place); returns
    (decomposed, fell back to the rules). Errors never stop the cohort; no report text is logged."""
    from core.anatomy_sets import load_anatomy_set

    names = tuple(load_anatomy_set(anatomy_set_name).anatomy_names)
    done = fallback = 0
    for record in records:
        if record.analysis is None or record.anatomy_texts is not None:
            continue
        try:
            record.anatomy_texts = llm_anatomy_texts(
                backend, record.report_text, names, record.analysis.anatomy_abnormal
            )
            done += 1
        except (LLMAnswerError, OSError, urllib.error.URLError, ValueError):
            fallback += 1
    return done, fallback
