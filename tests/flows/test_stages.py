"""Stage flows on a small synthetic demo cohort: real convert / segment libraries under Prefect.

Incremental: adding K studies processes exactly K in every stage; a rerun with nothing new does none.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from flows.stages import torchrun_command

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from synthetic import generate_cohort

    root = tmp_path_factory.mktemp("cohort")
    generate_cohort(root, studies=3, seed=0, size="demo", workers=2)
    return root


@pytest.mark.slow  # convert + segment + shard of 3 studies, three times
def test_stage_flows_are_incremental(cohort: Path, tmp_path: Path) -> None:
    """Adding K studies processes exactly K in convert, segment and shard; nothing new -> no work."""
    from flows.stages import convert_flow, parse_reports_flow, segment_flow, shard_flow
    from tests.flows.stage_chain import convert_job, fan_out, parse_job, segment_job, shard_job

    dicom = tmp_path / "dicom"
    holding = tmp_path / "later"
    shutil.copytree(cohort / "dicom", dicom)
    studies = sorted(p.name for p in dicom.iterdir())
    holding.mkdir()
    shutil.move(str(dicom / studies[-1]), holding / studies[-1])
    converted, segmented = tmp_path / "converted", tmp_path / "segmented"
    reports = str(tmp_path / "reports" / "reports.parquet")
    parse_reports_flow(parse_job(cohort / "reports.csv", Path(reports)), fan_out())

    def run_stages() -> tuple[object, object, object]:
        converted_summary = convert_flow(convert_job(dicom, converted), fan_out(batch_size=1))
        segmented_summary = segment_flow(
            segment_job(converted, segmented, cohort / "masks", qc=True), fan_out(batch_size=1)
        )
        shard_summary = shard_flow(shard_job(converted, segmented, Path(reports), tmp_path / "shards"))
        return converted_summary, segmented_summary, shard_summary

    c1, s1, h1 = run_stages()
    assert (c1.n_studies, c1.n_ok, c1.n_reused) == (2, 2, 0)
    assert (s1.n_ok, s1.n_reused, s1.n_quarantined) == (2, 0, 0)
    assert (h1.prepared, h1.reused, h1.written) == (2, 0, 2)

    shutil.move(str(holding / studies[-1]), dicom / studies[-1])  # K = 1 new study
    c2, s2, h2 = run_stages()
    assert (c2.n_studies, c2.n_ok, c2.n_reused) == (3, 3, 2)
    assert (s2.n_ok, s2.n_reused) == (3, 2)
    assert (h2.prepared, h2.reused, h2.written) == (1, 2, 3)
    assert len(list((segmented / "masks").glob("*.nii.gz"))) == 3

    c3, s3, h3 = run_stages()  # nothing new
    assert (c3.n_reused, s3.n_reused, h3.prepared) == (3, 3, 0)
    assert h3.content_hash == h2.content_hash

    import pyarrow.parquet as pq

    manifest = pq.read_table(converted / "studies.parquet").to_pylist()
    assert sorted(r["study_id"] for r in manifest) == sorted(r.study_id for r in c3.rows)
    assert all(r["status"] == "ok" for r in manifest)


def test_convert_flow_quarantines_bad_input_and_goes_on(cohort: Path, tmp_path: Path) -> None:
    from flows.stages import convert_flow
    from tests.flows.stage_chain import convert_job, fan_out

    dicom = tmp_path / "dicom"
    shutil.copytree(cohort / "dicom", dicom)
    victim = sorted(dicom.iterdir())[0]
    for path in sorted(victim.rglob("*.dcm"))[3:]:  # leave too few slices in every series of one study
        path.unlink()
    summary = convert_flow(convert_job(dicom, tmp_path / "out", salt="s"), fan_out(batch_size=2))
    assert summary.n_studies == 3 and summary.n_quarantined == 1 and summary.n_ok == 2
    quarantined = [r for r in summary.rows if r.status != "ok"]
    assert quarantined[0].reason


def test_torchrun_command_uses_gpu_count() -> None:
    assert torchrun_command(0, ["train"])[1:] == ["-m", "fvlm.cli", "train"]
    command = torchrun_command(4, ["--params", "p.yaml", "train"])
    assert command[0].endswith("torchrun") and "--nproc-per-node=4" in command and "--standalone" in command
    assert command[-3:] == ["--params", "p.yaml", "train"]
    multi = torchrun_command(8, ["train"], nnodes=2, rdzv_endpoint="head:29400")
    assert "--nnodes=2" in multi and "--rdzv-endpoint=head:29400" in multi


_CHILD = """
import sys
from core.env import apply_offline_env
apply_offline_env()
from flows.stages import convert_flow, segment_flow
from tests.flows.stage_chain import convert_job, fan_out, segment_job
dicom, converted, segmented, masks = sys.argv[1:5]
convert_flow(convert_job(dicom, converted), fan_out(batch_size=1))
segment_flow(segment_job(converted, segmented, masks), fan_out(batch_size=1))
"""


def _stage_state(converted: Path, segmented: Path) -> dict[str, object]:
    """Everything the next stage reads, independent of timing and gzip time stamps."""
    import nibabel as nib
    import numpy as np
    import pyarrow.parquet as pq

    volatile = {"seconds", "reused"}
    state: dict[str, object] = {}
    for name, manifest in (("convert", converted / "studies.parquet"), ("segment", segmented / "segments.parquet")):
        rows = pq.read_table(manifest).to_pylist()
        state[name] = sorted(tuple(sorted((k, repr(v)) for k, v in row.items() if k not in volatile)) for row in rows)
    for folder in (converted / "volumes", segmented / "masks"):
        for path in sorted(folder.glob("*.nii.gz")):
            image = nib.load(path)
            data = np.asarray(image.dataobj)
            state[f"{folder.name}/{path.name}"] = (
                data.dtype.str,
                data.shape,
                data.tobytes().__hash__(),
                image.affine.round(6).tobytes(),
            )
    return state


@pytest.mark.slow
def test_kill_9_then_rerun_matches_an_uninterrupted_run(cohort: Path, tmp_path: Path) -> None:
    import os
    import random
    import signal
    import subprocess
    import sys
    import time

    from prefect.settings import PREFECT_API_URL

    from flows.stages import convert_flow, segment_flow
    from tests.flows.stage_chain import convert_job, fan_out, segment_job

    masks = str(cohort / "masks")
    reference_c, reference_s = tmp_path / "ref" / "converted", tmp_path / "ref" / "segmented"
    started = time.monotonic()
    convert_flow(convert_job(cohort / "dicom", reference_c), fan_out(batch_size=1))
    segment_flow(segment_job(reference_c, reference_s, masks), fan_out(batch_size=1))
    reference_seconds = time.monotonic() - started

    converted, segmented = tmp_path / "run" / "converted", tmp_path / "run" / "segmented"
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(cohort / "dicom"), str(converted), str(segmented), masks],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # kill somewhere between the first volume written and the end of a normal run
    rng = random.Random(os.environ.get("FVLM_KILL_SEED", "0"))
    deadline = time.monotonic() + 120
    while child.poll() is None and time.monotonic() < deadline and not list((converted / "volumes").glob("*.nii.gz")):
        time.sleep(0.05)
    time.sleep(rng.uniform(0.0, reference_seconds / 2))
    assert child.poll() is None, "the run ended before the kill point"
    child.send_signal(signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL

    convert_flow(convert_job(cohort / "dicom", converted), fan_out(batch_size=1))
    segment_flow(segment_job(converted, segmented, masks), fan_out(batch_size=1))
    assert _stage_state(converted, segmented) == _stage_state(reference_c, reference_s)


@pytest.mark.slow  # spaCy pipeline built twice (~10-20 s)
def test_parse_reports_flow_matches_the_library(cohort: Path, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from flows.stages import parse_reports_flow
    from report_parsing.tables import ParseOptions, parse_reports_file, write_tables
    from tests.flows.stage_chain import fan_out, parse_job

    lines = (cohort / "reports.csv").read_text().splitlines()
    reports = tmp_path / "reports.csv"
    reports.write_text("\n".join([*lines, "emptykey,,", lines[1]]) + "\n")  # + an empty report, a duplicate
    options = {"salt": "test-salt"}
    result = parse_reports_flow(
        parse_job(reports, tmp_path / "flow" / "reports.parquet", **options), fan_out(batch_size=2)
    )
    records = parse_reports_file(reports, ParseOptions(**options))
    library_long, library_studies = write_tables(records, tmp_path / "lib" / "reports.parquet", "ctrate4")
    assert pq.read_table(result.long_path).equals(pq.read_table(library_long))
    assert pq.read_table(result.studies_path).equals(pq.read_table(library_studies))
    assert sorted(r.status for r in result.records).count("ok") == len(lines) - 1


@pytest.mark.slow
def test_kill_9_of_the_stage_chain_then_rerun_gives_the_same_shards(cohort: Path, tmp_path: Path) -> None:
    """kill -9 at a random point of convert -> segment -> parse -> shard, rerun: identical shard hash."""
    import os
    import random
    import signal
    import subprocess
    import sys
    import time

    from prefect.settings import PREFECT_API_URL

    from tests.flows.stage_chain import run_chain

    started = time.monotonic()
    reference = run_chain(cohort, tmp_path / "ref")
    reference_seconds = time.monotonic() - started
    assert reference == run_chain(cohort, tmp_path / "ref"), "a rerun with nothing new changed the shards"

    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    work = tmp_path / "run"
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.flows.stage_chain", str(cohort), str(work)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    rng = random.Random(os.environ.get("FVLM_KILL_SEED", "1"))
    deadline = time.monotonic() + 120
    while child.poll() is None and time.monotonic() < deadline and not list((work / "converted").rglob("*.nii.gz")):
        time.sleep(0.05)
    time.sleep(rng.uniform(0.0, reference_seconds * 0.8))
    killed = child.poll() is None
    if killed:
        child.send_signal(signal.SIGKILL)
    child.wait()
    assert run_chain(cohort, work) == reference
    assert killed or child.returncode == 0


def test_torchrun_train_flow_runs_the_train_command_as_a_subprocess(tmp_path: Path) -> None:
    """No shards: the real `fvlm train` child fails and its message reaches the flow's error."""
    from flows.stages import torchrun_train_flow
    from flows.subprocesses import CommandError

    params = tmp_path / "params.yaml"
    params.write_text("paths: {shards: no-shards-here, models: models, metrics: metrics}\n")
    with pytest.raises(CommandError) as info:
        torchrun_train_flow(
            params_path=str(params),
            gpus=0,
            tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
            metrics_path=str(tmp_path / "metrics" / "train.json"),
        )
    assert info.value.command[1:4] == ["-m", "fvlm.cli", "--params"] and "train" in info.value.command
    assert "fvlm train" in info.value.tail


def test_run_stage_is_the_one_flow_or_library_switch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No Prefect server (PREFECT_API_URL unset), FVLM_NO_FLOWS / orchestration.stage_flows / a torchrun rank
    (LOCAL_RANK) pick the library; otherwise the flow gets the job and the fan-out of the orchestration section with the
    stage's overrides."""
    import flows.stages
    from core.config import config_from_dict
    from flows.batching import FanOut
    from fvlm.commands import run_stage

    calls: list[tuple[str, object, object]] = []
    monkeypatch.setattr(flows.stages, "convert_flow", lambda job, fan_out: calls.append(("flow", job, fan_out)))
    monkeypatch.setattr(flows.stages, "shard_flow", lambda job: calls.append(("shard", job, None)))

    def library(job: object) -> None:
        calls.append(("library", job, None))

    config = config_from_dict(
        {"orchestration": {"batch_size": 3, "retries": 5}, "services": {"data_dir": str(tmp_path / "svc")}},
        environ={},
    )
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setenv("FVLM_NO_FLOWS", "0")
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    run_stage(config, "job", library, "convert_flow", {"max_workers": 7})  # no server: the library
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")  # a server (services / fvlm demo)
    monkeypatch.setenv("FVLM_NO_FLOWS", "1")
    run_stage(config, "job", library, "convert_flow", {"max_workers": 7})
    monkeypatch.setenv("FVLM_NO_FLOWS", "0")
    run_stage(config, "job", library, "convert_flow", {"max_workers": 7})
    run_stage(config, "job", library, "shard_flow")
    monkeypatch.setenv("LOCAL_RANK", "0")
    run_stage(config, "job", library, "convert_flow", {"max_workers": 7})
    monkeypatch.delenv("LOCAL_RANK")
    off = config_from_dict({"orchestration": {"stage_flows": False}}, environ={})
    run_stage(off, "job", library, "convert_flow", {"max_workers": 7})
    assert [kind for kind, _, _ in calls] == ["library", "library", "flow", "shard", "library", "library"]
    fan_out = calls[2][2]
    assert fan_out == FanOut.from_config(config.orchestration, max_workers=7)
    assert isinstance(fan_out, FanOut) and (fan_out.batch_size, fan_out.retries, fan_out.max_workers) == (3, 5, 7)


def test_train_and_evaluate_commands_run_their_flows(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """With a Prefect server `fvlm train` / `fvlm evaluate` hand their jobs to train_flow / evaluate_flow
    (the data stages' door); a torchrun rank runs the library instead (no flow per rank)."""
    import yaml

    import flows.stages
    import training.stages
    from fvlm.cli import main
    from tests.training.samples import tiny_config
    from training.evaluation.job import EvaluateJob
    from training.trainer.job import TrainJob

    calls: list[tuple[str, object]] = []

    class Reached(Exception):  # noqa: N818 - the door was reached; the command stops there
        pass

    def door(name: str) -> object:
        def record(job: object) -> None:
            calls.append((name, job))
            raise Reached

        return record

    monkeypatch.setattr(flows.stages, "train_flow", door("train_flow"))
    monkeypatch.setattr(flows.stages, "evaluate_flow", door("evaluate_flow"))
    monkeypatch.setattr(training.stages, "run_train", door("run_train"))
    raw = tiny_config(tmp_path).model_dump(mode="json", exclude={"root"})
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({**raw, "profiles": {"demo": {}}}))
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    monkeypatch.setenv("FVLM_NO_FLOWS", "0")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    for command in (["train", "--steps", "2", "--no-tracking"], ["evaluate", "--no-tracking"]):
        with pytest.raises(Reached):
            main(["--params", str(params), *command])
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(Reached):
        main(["--params", str(params), "train", "--steps", "2", "--no-tracking"])
    assert [name for name, _ in calls] == ["train_flow", "evaluate_flow", "run_train"]
    train_job, evaluate_job = calls[0][1], calls[1][1]
    assert isinstance(train_job, TrainJob) and train_job.steps == 2 and not train_job.tracking.enabled
    assert isinstance(evaluate_job, EvaluateJob) and evaluate_job.model_ref == str(tmp_path / "data/models/model")


@pytest.mark.slow  # two 2-step trainings and an evaluation, under Prefect (~45 s here)
def test_train_and_evaluate_flows_run_the_libraries_and_are_recorded(tmp_path: Path) -> None:
    """Real flow runs on tiny shards: train_flow trains (metrics file, model; the same weights as the library
    run), evaluate_flow scores it; both flow runs are in the Prefect API, as the data stages' are."""
    import asyncio

    import torch
    from prefect.client.orchestration import get_client

    from flows.stages import evaluate_flow, train_flow
    from tests.training.samples import ANATOMIES, make_samples, tiny_config, write_shard_split
    from training.evaluation.job import EvaluateJob
    from training.models.model import FVLM
    from training.stages import run_train
    from training.trainer.job import TrainJob

    shards = tmp_path / "shards"
    for split, seed in (("train", 21), ("val", 22), ("test", 23)):
        write_shard_split(shards, split, make_samples(6 if split != "train" else 8, seed=seed), ANATOMIES)
    config = tiny_config(tmp_path, evaluate={"bootstrap": 10})
    library = run_train(TrainJob.from_config(config, shards=shards, out=tmp_path / "library", steps=2))
    # the WordPiece trainer orders equal-frequency pieces arbitrarily: give both runs one tokenizer
    shutil.copytree(tmp_path / "library" / "tokenizer", tmp_path / "models" / "tokenizer")
    result = train_flow(TrainJob.from_config(config, shards=shards, out=tmp_path / "models", steps=2))
    assert result.steps == 2 and (tmp_path / "models" / "model" / "zero_shot.json").is_file()
    assert (tmp_path / "metrics" / "train.json").is_file()
    assert result.losses == library.losses  # the flow trains exactly as the library does: same weights
    a = FVLM.from_pretrained(tmp_path / "library" / "model").state_dict()
    b = FVLM.from_pretrained(tmp_path / "models" / "model").state_dict()
    assert all(torch.equal(a[key], b[key]) for key in a)
    job = EvaluateJob.from_config(config, model=tmp_path / "models" / "model", shards=shards, out=tmp_path / "eval")
    report = evaluate_flow(job)
    assert report["n_test"] == 6 and (tmp_path / "eval" / "eval_report.json").is_file()

    async def flow_names() -> set[str]:
        async with get_client() as client:
            runs = await client.read_flow_runs()
            flows = {flow.id: flow.name for flow in await client.read_flows()}
        return {flows[run.flow_id] for run in runs if run.state is not None and run.state.is_completed()}

    assert {"fvlm-train", "fvlm-evaluate"} <= asyncio.run(flow_names())
