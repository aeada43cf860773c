"""The optional LLM decomposition backend against a stub OpenAI-compatible server on 127.0.0.1 (started
by the test; no network). Answers are validated; a report with a bad answer keeps the rule-based text."""

from __future__ import annotations

import csv
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from core.anatomy_sets import CTRATE_LABELS
from report_parsing.llm_decomposition import LLMAnswerError, LLMBackend, validated_texts
from report_parsing.tables import ParseOptions, parse_reports_file

REPORTS = {
    "good": "Heart size is increased. Emphysema is seen in both lungs.",
    "unknown_key": "Thoracic aorta diameter is normal.",
    "invented": "Trachea is open.",
    "not_json": "Esophagus is normal.",
}
ANSWERS = {
    "good": json.dumps({"heart": "Heart size is increased.", "lung": "Emphysema is seen in both lungs."}),
    "unknown_key": json.dumps({"pancreas": "Thoracic aorta diameter is normal."}),
    "invented": json.dumps({"lung": "A large mass fills the left upper lobe."}),
    "not_json": "The esophagus looks fine to me.",
}


class _Stub(BaseHTTPRequestHandler):
    requests: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server API)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
        report = body["messages"][-1]["content"]
        kind = next((k for k, text in REPORTS.items() if text in report), "not_json")
        payload = {"choices": [{"message": {"role": "assistant", "content": ANSWERS[kind]}}]}
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:  # quiet
        pass


@pytest.fixture()
def stub_url() -> Iterator[str]:
    _Stub.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def test_validation_rules() -> None:
    names = ("lung", "heart", "esophagus", "aorta")
    report = "Heart size is increased. Emphysema in both lungs."
    assert validated_texts('```json\n{"heart": "Heart size is increased."}\n```', report, names) == {
        "heart": "Heart size is increased."
    }
    for bad in ("[]", '{"liver": "x"}', '{"lung": 3}', '{"lung": "Nodules with cavitation everywhere."}', "no"):
        with pytest.raises(LLMAnswerError):
            validated_texts(bad, report, names)


def test_parse_reports_with_the_llm_backend_falls_back_per_report(stub_url: str, tmp_path: Path) -> None:
    path = tmp_path / "reports.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["study_key", "Findings", "Impression"])
        for key, text in REPORTS.items():
            writer.writerow([key, text, ""])
    options = ParseOptions(llm_endpoint=stub_url, llm_model="stub-model")
    records = {record.key: record for record in parse_reports_file(path, options)}
    assert len(_Stub.requests) == len(REPORTS)
    request = _Stub.requests[0]
    assert request["path"] == "/v1/chat/completions" and request["body"]["model"] == "stub-model"
    good = records["good"].anatomy_texts
    assert good[0].text == "Emphysema is seen in both lungs." and good[1].text == "Heart size is increased."
    assert good[0].abnormal and good[1].abnormal  # flags from the rules (emphysema, enlarged heart)
    assert good[2].text == "esophagus shows no significant abnormalities." and not good[2].abnormal
    for key in ("unknown_key", "invented", "not_json"):
        assert records[key].anatomy_texts is None  # kept the rule-based text
    plain = {record.key: record.labels for record in parse_reports_file(path, ParseOptions())}
    assert {key: record.labels for key, record in records.items()} == plain


def test_unreachable_endpoint_keeps_the_rules(tmp_path: Path) -> None:
    path = tmp_path / "reports.csv"
    path.write_text("study_key,Findings,Impression\na,Heart size is increased.,\n", encoding="utf-8")
    # port 9 on 127.0.0.1: nothing listens there (connection refused at once)
    options = ParseOptions(llm_endpoint="http://127.0.0.1:9/v1", llm_model="x")
    (record,) = parse_reports_file(path, options)
    assert record.anatomy_texts is None and record.labels[CTRATE_LABELS.index("Cardiomegaly")] == 1


def test_backend_sends_the_api_key(stub_url: str) -> None:
    LLMBackend(stub_url, "m", api_key="secret").ask(REPORTS["good"], ("lung", "heart"))
    assert _Stub.requests[-1]["auth"] == "Bearer secret"
    assert _Stub.requests[-1]["body"]["messages"][0]["role"] == "system"
