"""The one typed configuration: ``params.yaml`` -> :class:`FvlmConfig`.

Everything a stage needs is read here, once. Stages receive plain values (paths, ints, lists), never
this object's YAML. Conventions that hold everywhere in the project:

* array axis order is (z, y, x) for volumes, masks, crop sizes, patch sizes and spacings;
* volumes on disk are RAS+ NIfTI, int16 Hounsfield units;
* relative paths are relative to the directory holding ``params.yaml`` (the repo root); a path typed on
  the command line is relative to the shell's working directory (``fvlm/commands/_help.py``, ``cli_path``).

What runs is what ``params.yaml`` says: there is no hidden profile merge (DVC tracks each stage's
keys, so a value it does not see must not change a stage). Scales live in their own files,
``params.<name>.yaml`` (``params.paper.yaml``, ``params.demo.yaml``): :func:`use_params_file`
(``fvlm config use <name>``) writes their keys into ``params.yaml``, a visible diff. ``profile:`` is a
label naming the last one applied. Environment overrides for paths and URIs (deployment settings,
not model or data parameters):

=============================  ===================================
``FVLM_DATA_DIR``              ``paths.data_dir``
``FVLM_SALT``                  ``privacy.salt`` (pseudonymisation key)
``MLFLOW_TRACKING_URI``        ``tracking.mlflow_tracking_uri``
``PREFECT_API_URL``            ``tracking.prefect_api_url``
``TOTALSEG_HOME_DIR``          ``segment.totalseg_home``
=============================  ===================================
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

PARAMS_FILE = "params.yaml"


class ConfigError(ValueError):
    """A params.yaml that cannot be used; the message names the file and the key."""


_SECTION_PATHS: dict[int, str] = {}  # id(section) -> "train." while $FVLM_CONFIG_ACCESS_LOG is set


def flatten_keys(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: nested mappings become dotted keys, lists stay values."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(flatten_keys(value, name))
        else:
            out[name] = value
    return out


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def __getattribute__(self, name: str) -> Any:
        value = object.__getattribute__(self, name)
        if _SECTION_PATHS and not name.startswith("_") and name in type(self).model_fields:
            prefix = _SECTION_PATHS.get(id(self))
            if prefix is not None and not isinstance(value, _Section):
                _record_access(prefix, name)
        return value


class PathsConfig(_Section):
    data_dir: str = "data"
    demo_dir: str = "data/demo"  # generated synthetic cohort (dicom/, reports.csv, labels.csv, masks/)
    raw_dataset: str = "data/demo"  # the `dvc add`-ed folder holding raw_dicom / reports_csv / masks
    raw_dicom: str = "data/demo/dicom"  # input DICOM tree for `fvlm convert`
    reports_csv: str = "data/demo/reports.csv"
    labels_csv: str = "data/demo/labels.csv"
    precomputed_masks: str = "data/demo/masks"
    converted: str = "data/converted"  # volumes/<study_id>.nii.gz + studies.parquet
    segmented: str = "data/segmented"  # masks/<study_id>.nii.gz + segments.parquet + qc/
    reports_dir: str = "data/reports"  # parse-reports stage output (holds reports_table)
    reports_table: str = "data/reports/reports.parquet"
    shards: str = "data/shards"
    models: str = "data/models"
    eval: str = "data/eval"  # evaluation report (plots data, per-label tables)
    metrics: str = "metrics"
    ingest_archive: str = "data/ingest_archive"  # `dvc add`-ed record of ingested files (raw_dicom outside the repo)


class PrivacyConfig(_Section):
    salt: str = "fvlm-demo-salt-change-me"  # set FVLM_SALT in production; keep it secret
    pseudonym_length: int = Field(16, ge=8, le=64)
    # pseudonym -> folder / UIDs / PatientID / accession (written by convert, read by `fvlm lookup`); outside
    # every data output, gitignored, 0600 (docs/convert.md, Identity); null: not kept
    identity_map: str | None = ".fvlm-private/identity.sqlite"


class DemoDataConfig(_Section):
    studies: int = Field(20, ge=1)
    seed: int = 0
    size: Literal["demo", "small", "real"] = "demo"
    abdomen_fraction: float = Field(0.3, ge=0.0, le=1.0)
    workers: int = Field(2, ge=1)  # parallel study processes
    difficulty: Literal["learnable", "paper"] = (
        "learnable"  # lesion size / contrast / prevalence (docs/learnability.md)
    )


# the keys preprocessing.series_selection interprets (tests/core/test_config.py checks they agree)
SeriesPreference = Literal["thinnest", "soft_tissue_kernel", "most_slices", "largest_coverage"]
PositiveMm = Annotated[float, Field(gt=0)]
PositiveVoxels = Annotated[int, Field(ge=1)]
Ratio = Annotated[float, Field(ge=0.0, le=1.0)]


class ConvertConfig(_Section):
    input_format: Literal["dicom", "ctrate"] = "dicom"
    strict: bool = False  # quarantine tilted / gappy series instead of resampling
    workers: int = Field(2, ge=1)
    series_preference: list[SeriesPreference] = Field(["thinnest", "soft_tissue_kernel", "most_slices"], min_length=1)
    min_slices: int = Field(10, ge=1)
    max_spacing_deviation: float = Field(0.1, gt=0)  # relative; beyond it the grid is resampled
    output_extension: Literal[".nii.gz", ".nii"] = ".nii.gz"
    ctrate_metadata_csv: str | None = None
    study_key_tag: str = "StudyInstanceUID"  # DICOM tag whose value keys reports.csv (hashed into study_id)


class SegmentConfig(_Section):
    backend: Literal["precomputed", "totalsegmentator"] = "precomputed"
    anatomy_set: str = "ctrate4"
    mode: Literal["fast", "full", "fastest"] = "fast"
    device: Literal["auto", "cpu", "gpu"] = "auto"
    roi_subset: bool = True
    roi_subset_robust: bool = True  # rough crop with the 3 mm model (small organs), not the 6 mm one
    totalseg_home: str | None = None
    batch_size: int = Field(8, ge=1)
    qc_pictures: bool = True

    @field_validator("anatomy_set")
    @classmethod
    def _known_anatomy_set(cls, value: str) -> str:
        from core.anatomy_sets import available_sets

        if value not in available_sets():
            raise ValueError(f"unknown anatomy set {value!r}; known: {', '.join(available_sets())}")
        return value


class ReportsConfig(_Section):
    id_column: str = "study_key"
    findings_column: str | None = "Findings"
    impression_column: str | None = "Impression"
    text_column: str | None = None
    batch_size: int = Field(256, ge=1)
    n_process: int = Field(1, ge=1)
    max_chars: int = Field(20000, ge=100)  # longer reports: status "truncated", first max_chars parsed
    scrub_phi: bool = True  # replace names / dates / ids / phones / institutions
    uncertain_is_positive: bool = True  # "?" / "suspicious for" findings count as present
    decomposition: str | None = None  # fVLM desc_info/conc_info folder or file: the per-anatomy text


class GridConfig(_Section):
    """Model grid: resampling, crop and intensity window, all in (z, y, x)."""

    spacing_zyx_mm: tuple[PositiveMm, PositiveMm, PositiveMm] = (3.0, 1.0, 1.0)
    crop_zyx: tuple[PositiveVoxels, PositiveVoxels, PositiveVoxels] = (112, 256, 352)
    hu_window: tuple[float, float] = (-1150.0, 350.0)
    roi_margin_slices: int = Field(5, ge=0)
    roi_margin_voxels: int = Field(20, ge=0)
    flip_prob: float = Field(0.2, ge=0.0, le=1.0)  # training: random flip per axis (public fVLM: 0.2)

    @field_validator("hu_window")
    @classmethod
    def _window_ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[0] >= value[1]:
            raise ValueError("hu_window must be (low, high) with low < high")
        return value


class SplitConfig(_Section):
    train: float = Field(0.7, ge=0, le=1)
    val: float = Field(0.15, ge=0, le=1)
    test: float = Field(0.15, ge=0, le=1)
    seed: int = 0

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitConfig:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must be 1.0, got {total:g}")
        return self


class ShardConfig(_Section):
    rows_per_group: int = Field(4, ge=1)
    target_file_mb: float = Field(1024, gt=0)  # roll to a new part file once this many MB of blobs are in one
    zstd_level: int = Field(3, ge=1, le=22)
    workers: int = Field(1, ge=1)  # processes preparing studies (resample + crop + encode)
    shuffle_buffer: int = Field(16, ge=1)  # reader: samples held for shuffling in each worker


class VisionConfig(_Section):
    kind: Literal["vit", "conv"] = (
        "vit"  # vit: the paper's 3D ViT; conv: small 3D CNN (training/models/conv3d.py), same token grid
    )
    conv_channels: list[PositiveVoxels] | None = None  # conv: widths per stage (None: doubling up to embed_dim)
    # conv: the last N channels of each token are a per-voxel map (conv_peak_kernel^3 conv + BatchNorm + ReLU, + 1x1)
    # max-pooled over the token's patch: focal bright findings (devices) reach the pooling (0: off)
    conv_peak_channels: int = Field(0, ge=0)
    conv_peak_kernel: int = Field(3, ge=1)
    patch_zyx: tuple[PositiveVoxels, PositiveVoxels, PositiveVoxels] = (16, 16, 32)
    embed_dim: int = Field(768, ge=8)
    depth: int = Field(12, ge=1)
    heads: int = Field(12, ge=1)
    mlp_ratio: float = Field(4.0, gt=0)
    pool_layers: list[Annotated[int, Field(ge=0)]] = [4, 7, 10]
    grad_checkpointing: bool = False


class TextConfig(_Section):
    name_or_path: str | None = "microsoft/BiomedVLP-CXR-BERT-specialized"  # None -> small BERT from scratch
    vocab_size: int = Field(4096, ge=64)
    vocab_min_patients: int = Field(5, ge=1)  # scratch WordPiece: a word needs >= this many distinct patients (privacy)
    hidden: int = Field(128, ge=8)
    layers: int = Field(2, ge=1)
    heads: int = Field(2, ge=1)
    max_length: int = Field(128, ge=8)
    pooling: Literal["auto", "cls", "mean"] = "auto"  # auto: [CLS] for a pretrained encoder, mean from scratch

    @model_validator(mode="before")
    @classmethod
    def _renamed_vocab_key(cls, raw: Any) -> Any:
        # models saved before 2026-12-04 record `vocab_min_reports` in fvlm_config.json: they must still load
        if isinstance(raw, dict) and "vocab_min_reports" in raw:
            raw = {k: v for k, v in raw.items() if k != "vocab_min_reports"}
            raw.setdefault("vocab_min_patients", 5)
        return raw


class ModelConfig(_Section):
    vision: VisionConfig = VisionConfig()
    text: TextConfig = TextConfig()
    embed_dim: int = Field(512, ge=8)
    temperature_init: float = Field(0.07, gt=0)


class TrainConfig(_Section):
    loss: Literal["fvlm", "clip"] = "fvlm"
    normal_positives: bool = True
    # public fVLM code: an anatomy enters a step's loss only when the batch has an abnormal sample of it
    require_abnormal: bool = True
    coteaching_alpha: float = Field(0.0, ge=0.0, le=1.0)
    batch_size: int = Field(14, ge=1)
    steps: int = Field(1000, ge=1)
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    warmup_steps: int = Field(100, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    amp: bool = True
    num_workers: int = Field(2, ge=0)
    gpus: int = Field(1, ge=0)
    checkpoint_every: int = Field(100, ge=1)
    seed: int = 0
    log_every: int = Field(1, ge=1)  # MLflow metric logging interval (steps)
    coteaching_ema: float = Field(0.99, ge=0.0, lt=1.0)  # EMA decay of the co-teaching peer model
    deterministic: bool = False  # torch.use_deterministic_algorithms (CPU tests / exact resume)
    # beyond the published fVLM recipe (training/models/auxiliary.py, docs/training.md "Recipe keys"):
    contrastive: Literal["softmax", "sigmoid"] = "softmax"  # sigmoid: SigLIP's pairwise loss, same positives
    label_loss_weight: float = Field(0.0, ge=0.0)  # > 0: per-label BCE from the parsed report labels
    cross_anatomy_weight: float = Field(0.0, ge=0.0)  # > 0: one contrast over all (study, anatomy) cells
    # a run stops (exit 1, no model) after this many steps in a row with a loss of exactly 0 (nothing entered it)
    max_silent_steps: int = Field(25, ge=1)
    # fast-path options (docs/training.md; benchmarks/train_step.py measures them); off: the eager run is unchanged
    compile: bool = False  # torch.compile the vision tower's forward (its input shape is the crop: one graph)
    fused_optimizer: bool = False  # AdamW(fused=True); a device without the kernel falls back to AdamW (logged)


# evaluate.promote_floor: the absolute bar a model must clear before the promotion gate compares it with the
# champion. "ci_low": the lower end of the bootstrap CI of the mean AUC (evaluate.bootstrap > 0, level
# evaluate.ci_level) must be above 0.5 (chance); a number x in [0, 1]: the mean AUC must be at least x;
# "none" (or YAML null): no floor (only "beats the champion on the same data").
PromoteFloor = Literal["ci_low", "none"] | Annotated[float, Field(ge=0.0, le=1.0)]


class EvaluateConfig(_Section):
    bootstrap: int = Field(1000, ge=0)
    prompts_file: str | None = None
    # zero-shot negative prompt: plain (fVLM's pair), with_normal (averaged with the anatomy's normal
    # sentence) or auto (the one with the higher validation mean AUC; training/models/zero_shot.py)
    negative_rule: Literal["plain", "with_normal", "auto"] = "plain"
    promote_alias: str = "champion"
    promote_floor: PromoteFloor = "ci_low"
    eval_mode: Literal["anatomy", "center"] = "anatomy"  # reader's deterministic crop for evaluation
    batch_size: int = Field(4, ge=1)
    threshold_method: Literal["youden", "f1"] = "youden"  # chosen on val, applied to test
    ci_level: float = Field(0.95, gt=0.0, lt=1.0)
    seed: int = 0
    # the evidence a promotion needs (training/tracking/gate.py check_evidence), on val and on test alike:
    # studies per split, and labels with at least this many positives and negatives in both splits
    min_studies: int = Field(20, ge=1)
    min_label_positives: int = Field(3, ge=1)
    min_label_negatives: int = Field(3, ge=1)
    min_scored_labels: int = Field(8, ge=1)  # capped at the anatomy set's number of scored labels

    @field_validator("promote_floor", mode="before")
    @classmethod
    def _null_floor_is_none(cls, value: Any) -> Any:
        if value is None:  # YAML `null` / `~`
            return "none"
        if isinstance(value, str) and value.strip().lower() in ("none", "ci_low"):
            return value.strip().lower()
        if isinstance(value, bool):  # YAML true/false would read as 1.0 / 0.0
            raise ValueError("promote_floor is 'ci_low', 'none' or a mean AUC in [0, 1], not a boolean")
        return value


class TrackingConfig(_Section):
    mlflow_tracking_uri: str = "sqlite:///.fvlm-services/mlflow/mlflow.db"  # the store `fvlm services up` serves
    experiment: str = "fvlm"
    registered_model: str = "fvlm-ct"
    prefect_api_url: str | None = None
    enabled: bool = True  # False: no MLflow at all (metrics files still written)
    register_model: bool = True  # log + register the final model as a new version
    log_checkpoints: bool = True  # checkpoints (last, best) as run artifacts
    system_metrics: bool = False  # mlflow system metrics (needs psutil; off by default)
    artifact_location: str | None = None  # new experiments' artifact root (default: MLflow's)


class OrchestrationConfig(_Section):
    stage_flows: bool = True  # `fvlm convert/segment/shard` run their Prefect flows
    task_runner: Literal["threads", "processes", "dask"] = "threads"
    batch_size: int = Field(16, ge=1)  # studies per Prefect task
    max_workers: int = Field(2, ge=1)
    retries: int = Field(2, ge=0)
    retry_delay_s: float = Field(10.0, ge=0)  # exponential backoff base for transient failures
    ingest_cron: str = "0 2 * * *"
    train_cron: str = "0 4 * * 6"
    watch_dir: str = "data/incoming"
    dask_address: str | None = None  # tcp://scheduler:8786; None -> LocalCluster of max_workers
    gpu_concurrency_limit: str | None = "fvlm-gpu"  # Prefect global concurrency limit held per GPU batch
    work_pool: str = "fvlm-process"  # process work pool for prefect.yaml deployments
    timezone: str = "UTC"  # of the cron schedules

    @field_validator("ingest_cron", "train_cron")
    @classmethod
    def _five_field_cron(cls, value: str) -> str:
        import re

        fields = value.split()
        if len(fields) != 5 or not all(re.fullmatch(r"[0-9A-Za-z*/,\-?LW#]+", part) for part in fields):
            raise ValueError(f"{value!r} is not a 5-field cron expression (minute hour day month weekday)")
        return value

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        import zoneinfo

        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (an IANA name such as UTC or Europe/Berlin)") from None
        return value


class ServicesConfig(_Section):
    data_dir: str = ".fvlm-services"
    host: str = "127.0.0.1"
    prefect_port: int = Field(4200, ge=1, le=65535)
    mlflow_port: int = Field(5000, ge=1, le=65535)
    startup_timeout_s: float = Field(120.0, gt=0)


class FvlmConfig(_Section):
    profile: str = "demo"
    root: Path = Path(".")
    paths: PathsConfig = PathsConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    demo_data: DemoDataConfig = DemoDataConfig()
    convert: ConvertConfig = ConvertConfig()
    segment: SegmentConfig = SegmentConfig()
    reports: ReportsConfig = ReportsConfig()
    grid: GridConfig = GridConfig()
    split: SplitConfig = SplitConfig()
    shard: ShardConfig = ShardConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    tracking: TrackingConfig = TrackingConfig()
    orchestration: OrchestrationConfig = OrchestrationConfig()
    services: ServicesConfig = ServicesConfig()

    def path(self, relative: str | os.PathLike[str]) -> Path:
        """Resolve a configured path against the config root (absolute paths pass through)."""
        candidate = Path(relative)
        return candidate if candidate.is_absolute() else self.root / candidate

    def flat(self) -> dict[str, Any]:
        """Flattened ``section.key`` view, e.g. for MLflow params."""
        return flatten_keys(self.model_dump(mode="json", exclude={"root"}))


_ENV_OVERRIDES: dict[str, tuple[str, ...]] = {
    "FVLM_DATA_DIR": ("paths", "data_dir"),
    "FVLM_SALT": ("privacy", "salt"),
    "MLFLOW_TRACKING_URI": ("tracking", "mlflow_tracking_uri"),
    "PREFECT_API_URL": ("tracking", "prefect_api_url"),
    "TOTALSEG_HOME_DIR": ("segment", "totalseg_home"),
}


def environment_overrides(environ: dict[str, str] | None = None) -> dict[str, str]:
    """``section.key`` -> the environment variable that sets it now (for ``fvlm config show``)."""
    environ = dict(os.environ) if environ is None else environ
    return {".".join(keys): variable for variable, keys in _ENV_OVERRIDES.items() if environ.get(variable)}


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


# --- which config keys a stage reads ------------------------------------------------------------------
# With $FVLM_CONFIG_ACCESS_LOG set, every configured value a command reads (``config.train.steps``) is
# appended to that file as ``<fvlm subcommand>\t<section.key>``; tests check each stage's reads against
# its dvc.yaml ``params:`` (a stage reading an undeclared key would not be re-run by DVC when it changes).
ACCESS_LOG_ENV = "FVLM_CONFIG_ACCESS_LOG"
# keys that choose *how* or *where* a stage runs (workers, servers), not what it computes: not stage params
EXECUTION_KEYS: tuple[str, ...] = (
    "orchestration",
    "services",
    "tracking.mlflow_tracking_uri",
    "tracking.prefect_api_url",
    "convert.workers",
    "shard.workers",
    "demo_data.workers",
    "reports.n_process",
    "reports.batch_size",
    "segment.device",
    "segment.totalseg_home",
    "segment.batch_size",
    "train.num_workers",
    "train.gpus",
    "evaluate.batch_size",
    "paths.data_dir",
    "profile",
    "root",
)


def _record_access(prefix: str, name: str) -> None:
    target = os.environ.get(ACCESS_LOG_ENV)
    if not target:
        return
    import sys

    command = next((arg for arg in sys.argv[1:] if not arg.startswith("-")), "?")
    try:
        with open(target, "a", encoding="utf-8") as handle:
            handle.write(f"{command}\t{prefix}{name}\n")
    except OSError:
        pass


def _format_validation_error(source: str, error: ValidationError) -> str:
    lines = [f"{source}: invalid configuration"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "<root>"
        value = item.get("input")
        shown = "" if isinstance(value, dict) or "salt" in key else f" (got {value!r:.80})"
        lines.append(f"  key '{key}': {item['msg']}{shown}")
    return "\n".join(lines)


def config_from_dict(
    raw: dict[str, Any],
    *,
    root: Path = Path("."),
    profile: str | None = None,
    source: str = PARAMS_FILE,
    environ: dict[str, str] | None = None,
) -> FvlmConfig:
    """Build the typed config from a params mapping (profile merge, env overrides, validation)."""
    environ = dict(os.environ) if environ is None else environ
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: top level must be a mapping, got {type(raw).__name__}")
    data = copy.deepcopy(raw)
    profiles = data.pop("profiles", None) or {}
    if not isinstance(profiles, dict) or any(overrides for overrides in profiles.values()):
        raise ConfigError(
            f"{source}: key 'profiles': profiles are no longer merged over the base keys (DVC would not see "
            "the values that run); put the values in params.yaml, or keep them in params.<name>.yaml and "
            "apply them with `fvlm config use <name>`"
        )
    label = data.get("profile") or "demo"
    if profile and profile != label:
        raise ConfigError(
            f"{source}: key 'profile': params.yaml holds {label!r}, not {profile!r}; "
            f"`fvlm config use {profile}` writes params.{profile}.yaml into params.yaml"
        )
    data["profile"] = label
    for variable, (section, key) in _ENV_OVERRIDES.items():
        if environ.get(variable):
            data.setdefault(section, {})
            if not isinstance(data[section], dict):
                raise ConfigError(f"{source}: key '{section}' must be a mapping")
            data[section][key] = environ[variable]
    data["root"] = root
    try:
        config = FvlmConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_format_validation_error(source, error)) from None
    if environ.get(ACCESS_LOG_ENV):
        _register_sections(config, "")
    return config


def _register_sections(section: _Section, prefix: str) -> None:
    _SECTION_PATHS[id(section)] = prefix
    for name in type(section).model_fields:
        value = object.__getattribute__(section, name)
        if isinstance(value, _Section):
            _register_sections(value, f"{prefix}{name}.")


def find_params(start: Path | None = None) -> Path | None:
    """The nearest params.yaml at or above ``start`` (default: cwd), or $FVLM_PARAMS."""
    if os.environ.get("FVLM_PARAMS"):
        return Path(os.environ["FVLM_PARAMS"])
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / PARAMS_FILE).is_file():
            return folder / PARAMS_FILE
    return None


def load_config(params_path: str | os.PathLike[str] | None = None, *, profile: str | None = None) -> FvlmConfig:
    """Load ``params.yaml`` (found upwards from cwd when not given) into :class:`FvlmConfig`.

    Without any params.yaml the built-in defaults are used, rooted at the current directory.
    """
    path = Path(params_path) if params_path else find_params()
    if path is None:
        return config_from_dict({}, root=Path.cwd(), profile=profile, source="<defaults>")
    if not path.is_file():
        raise ConfigError(f"{path}: no such params file")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    return config_from_dict(raw, root=path.resolve().parent, profile=profile, source=str(path))


def or_config(override: Any, configured: Any) -> Any:
    """A stage job's ``from_config`` rule: a ``None`` override means "use the configured value"."""
    return configured if override is None else override


# --- params.<name>.yaml: scales applied visibly -------------------------------------------------------
def params_file_for(name: str, params_path: Path) -> Path:
    return params_path.with_name(f"params.{name}.yaml")


def use_params_file(params_path: Path, overlay_path: Path, *, name: str | None = None) -> list[str]:
    """Write every key of ``overlay_path`` into ``params_path`` (comments and other keys kept).

    Returns the ``section.key`` names whose value changed. The result is validated before it replaces
    ``params.yaml`` (atomically); ``profile:`` is set to ``name`` as a label.
    """
    overlay = yaml.safe_load(overlay_path.read_text()) or {}
    if not isinstance(overlay, dict):
        raise ConfigError(f"{overlay_path}: top level must be a mapping")
    text = params_path.read_text()
    base = yaml.safe_load(text) or {}
    changed: list[str] = []

    def walk(prefix: str, old: Any, new: Any) -> None:
        if isinstance(new, dict) and isinstance(old, dict):
            for key, value in new.items():
                walk(f"{prefix}.{key}" if prefix else str(key), old.get(key), value)
        elif old != new:
            changed.append(prefix)

    walk("", base, {**overlay, **({"profile": name} if name else {})})
    merged_plain = _deep_merge(base, {**overlay, **({"profile": name} if name else {})})
    config_from_dict(merged_plain, root=params_path.resolve().parent, source=str(overlay_path), environ={})
    try:  # round trip: keep params.yaml's comments and layout (ruamel.yaml ships with DVC)
        from ruamel.yaml import YAML

        rt = YAML()
        rt.preserve_quotes = True
        rt.width = 4096
        document = rt.load(text)

        def update(target: Any, values: dict[str, Any]) -> None:
            for key, value in values.items():
                if isinstance(value, dict) and isinstance(target.get(key), dict):
                    update(target[key], value)
                else:
                    target[key] = value

        overlay_document = rt.load(overlay_path.read_text())  # flow-style lists stay flow style
        if name:
            overlay_document["profile"] = name
        update(document, overlay_document)
        import io

        buffer = io.StringIO()
        rt.dump(document, buffer)
        new_text = buffer.getvalue()
    except ImportError:
        new_text = yaml.safe_dump(merged_plain, sort_keys=False)
    if yaml.safe_load(new_text) != merged_plain:
        raise ConfigError(f"{params_path}: rewriting with {overlay_path.name} did not give the expected values")
    tmp = params_path.with_name(params_path.name + ".tmp")
    tmp.write_text(new_text)
    os.replace(tmp, params_path)
    return changed


# --- one set of stores --------------------------------------------------------------------------------
def services_environment(config: FvlmConfig, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The variables that point a command at the stores ``fvlm services up`` serves.

    Running services (PID file + health check, :mod:`core.stores`): ``PREFECT_API_URL`` and
    ``MLFLOW_TRACKING_URI`` of the servers. Not running: ``PREFECT_HOME=<services.data_dir>/prefect``
    (Prefect's ephemeral server then opens the very database the server will serve later) and MLflow's
    ``tracking.mlflow_tracking_uri`` (by default the SQLite file under ``<services.data_dir>/mlflow/`` the
    MLflow server opens). Variables already set in ``environ`` are left alone (returned dict holds only
    what would be added).
    """
    from core.stores import running_client_env, service_healthy

    environ = dict(os.environ) if environ is None else environ
    services = config.services
    data_dir = config.path(services.data_dir)
    # the ports `fvlm services up` chose (its PID records), not params.yaml's: `up --prefect-port 4271` works
    # without sourcing services.env
    running = running_client_env(data_dir)
    added: dict[str, str] = {}
    if not environ.get("PREFECT_API_URL"):
        api = f"http://{services.host}:{services.prefect_port}/api"
        if config.tracking.prefect_api_url:
            added["PREFECT_API_URL"] = config.tracking.prefect_api_url
        elif running.get("PREFECT_API_URL"):
            added["PREFECT_API_URL"] = running["PREFECT_API_URL"]
        elif service_healthy(data_dir, "prefect", f"{api}/health"):  # a PID record of an older version
            added["PREFECT_API_URL"] = api
        elif not environ.get("PREFECT_HOME"):
            added["PREFECT_HOME"] = str(data_dir.resolve() / "prefect")
    if not environ.get("MLFLOW_TRACKING_URI"):
        url = f"http://{services.host}:{services.mlflow_port}"
        if running.get("MLFLOW_TRACKING_URI"):
            added["MLFLOW_TRACKING_URI"] = running["MLFLOW_TRACKING_URI"]
        elif service_healthy(data_dir, "mlflow", f"{url}/health"):
            added["MLFLOW_TRACKING_URI"] = url
    return added


def apply_services_environment(config: FvlmConfig) -> FvlmConfig:
    """Export :func:`services_environment` into ``os.environ``; the config reloaded when the URI changed."""
    added = services_environment(config)
    os.environ.update(added)
    if not os.environ.get("PREFECT_API_URL"):  # a flow may start Prefect's ephemeral server: wait as the load asks
        from core.processes import scale_ephemeral_startup_timeout

        scale_ephemeral_startup_timeout()
    if "PREFECT_HOME" in added:
        Path(added["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    uri = os.environ.get("MLFLOW_TRACKING_URI") or config.tracking.mlflow_tracking_uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        config.path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    elif uri.startswith("sqlite:////"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    if "MLFLOW_TRACKING_URI" in added:
        tracking = config.tracking.model_copy(update={"mlflow_tracking_uri": added["MLFLOW_TRACKING_URI"]})
        config = config.model_copy(update={"tracking": tracking})
    return config
