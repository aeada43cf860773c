"""The one typed configuration: ``params.yaml`` -> :class:`FvlmConfig`.

Everything a stage needs is read here, once. Stages receive plain values (paths, ints, lists), never
this object's YAML. Conventions that hold everywhere in the project:

* array axis order is (z, y, x) for volumes, masks, crop sizes, patch sizes and spacings;
* volumes on disk are RAS+ NIfTI, int16 Hounsfield units;
* relative paths are relative to the directory holding ``params.yaml`` (the repo root).

``profiles.<name>`` holds overrides deep-merged onto the base keys; the active profile is
``profile:`` in the file, or ``$FVLM_PROFILE``. Environment overrides for paths and URIs:

=============================  ===================================
``FVLM_PROFILE``               profile name
``FVLM_DATA_DIR``              ``paths.data_dir``
``FVLM_SALT``                  ``privacy.salt`` (pseudonymisation key)
``MLFLOW_TRACKING_URI``        ``tracking.mlflow_tracking_uri``
``PREFECT_API_URL``            ``tracking.prefect_api_url``
``FVLM_DVC_REMOTE``            ``paths.dvc_remote``
``TOTALSEG_HOME_DIR``          ``segment.totalseg_home``
=============================  ===================================
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

PARAMS_FILE = "params.yaml"


class ConfigError(ValueError):
    """A params.yaml that cannot be used; the message names the file and the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PathsConfig(_Section):
    data_dir: str = "data"
    demo_dir: str = "data/demo"            # generated synthetic cohort (dicom/, reports.csv, labels.csv, masks/)
    raw_dicom: str = "data/demo/dicom"     # input DICOM tree for `fvlm convert`
    reports_csv: str = "data/demo/reports.csv"
    labels_csv: str = "data/demo/labels.csv"
    precomputed_masks: str = "data/demo/masks"
    converted: str = "data/converted"      # volumes/<study_id>.nii.gz + studies.parquet
    segmented: str = "data/segmented"      # masks/<study_id>.nii.gz + segments.parquet + qc/
    reports_table: str = "data/reports/reports.parquet"
    shards: str = "data/shards"
    models: str = "data/models"
    metrics: str = "metrics"
    dvc_remote: str = ".dvc-remote"
    quarantine: str = "data/quarantine"


class PrivacyConfig(_Section):
    salt: str = "fvlm-demo-salt-change-me"  # set FVLM_SALT in production; keep it secret
    pseudonym_length: int = Field(16, ge=8, le=64)


class DemoDataConfig(_Section):
    studies: int = Field(20, ge=1)
    seed: int = 0
    size: Literal["demo", "small", "real"] = "demo"
    abdomen_fraction: float = Field(0.3, ge=0.0, le=1.0)
    workers: int = Field(2, ge=1)  # parallel study processes
    difficulty: Literal["learnable", "paper"] = "learnable"  # lesion size / contrast / prevalence (docs/learnability.md)


class ConvertConfig(_Section):
    input_format: Literal["dicom", "ctrate"] = "dicom"
    strict: bool = False                       # quarantine tilted / gappy series instead of resampling
    workers: int = Field(2, ge=1)
    series_preference: list[str] = ["thinnest", "soft_tissue_kernel", "most_slices"]
    min_slices: int = Field(10, ge=1)
    max_spacing_deviation: float = Field(0.1, gt=0)  # relative; beyond it the grid is resampled
    output_extension: Literal[".nii.gz", ".nii"] = ".nii.gz"
    ctrate_metadata_csv: str | None = None
    study_key_tag: str = "StudyInstanceUID"  # DICOM tag whose value keys reports.csv (hashed into study_id)


class SegmentConfig(_Section):
    backend: Literal["precomputed", "totalsegmentator"] = "precomputed"
    anatomy_set: str = "ctrate4"
    task: str = "total"
    mode: Literal["fast", "full", "fastest"] = "fast"
    device: Literal["auto", "cpu", "gpu"] = "auto"
    roi_subset: bool = True
    roi_subset_robust: bool = True     # rough crop with the 3 mm model (small organs), not the 6 mm one
    totalseg_home: str | None = None
    batch_size: int = Field(8, ge=1)
    qc_pictures: bool = True


class ReportsConfig(_Section):
    id_column: str = "study_key"
    findings_column: str | None = "Findings"
    impression_column: str | None = "Impression"
    text_column: str | None = None
    batch_size: int = Field(256, ge=1)
    n_process: int = Field(1, ge=1)
    max_chars: int = Field(20000, ge=100)       # longer reports: status "truncated", first max_chars parsed
    scrub_phi: bool = True                      # replace names / dates / ids / phones / institutions
    uncertain_is_positive: bool = True          # "?" / "suspicious for" findings count as present


class GridConfig(_Section):
    """Model grid: resampling, crop and intensity window, all in (z, y, x)."""

    spacing_zyx_mm: tuple[float, float, float] = (3.0, 1.0, 1.0)
    crop_zyx: tuple[int, int, int] = (112, 256, 352)
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
    train: float = Field(0.7, ge=0)
    val: float = Field(0.15, ge=0)
    test: float = Field(0.15, ge=0)
    seed: int = 0

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitConfig:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must be 1.0, got {total:g}")
        return self


class ShardConfig(_Section):
    rows_per_group: int = Field(4, ge=1)
    target_file_mb: float = Field(1024, gt=0)   # roll to a new part file once this many MB of blobs are in one
    zstd_level: int = Field(3, ge=1, le=22)
    workers: int = Field(1, ge=1)                # processes preparing studies (resample + crop + encode)
    shuffle_buffer: int = Field(16, ge=1)        # reader: samples held for shuffling in each worker


class VisionConfig(_Section):
    kind: Literal["vit", "conv"] = "vit"   # vit: the paper's 3D ViT; conv: small 3D CNN (training/conv3d.py), same token grid
    conv_channels: list[int] | None = None  # conv: widths per stage (None: doubling up to embed_dim)
    patch_zyx: tuple[int, int, int] = (16, 16, 32)
    embed_dim: int = Field(768, ge=8)
    depth: int = Field(12, ge=1)
    heads: int = Field(12, ge=1)
    mlp_ratio: float = 4.0
    pool_layers: list[int] = [4, 7, 10]
    grad_checkpointing: bool = False


class TextConfig(_Section):
    name_or_path: str | None = "microsoft/BiomedVLP-CXR-BERT-specialized"  # None -> small BERT from scratch
    vocab_size: int = Field(4096, ge=64)
    hidden: int = Field(128, ge=8)
    layers: int = Field(2, ge=1)
    heads: int = Field(2, ge=1)
    max_length: int = Field(128, ge=8)
    pooling: Literal["auto", "cls", "mean"] = "auto"  # auto: [CLS] for a pretrained encoder, mean from scratch


class ModelConfig(_Section):
    vision: VisionConfig = VisionConfig()
    text: TextConfig = TextConfig()
    embed_dim: int = Field(512, ge=8)
    temperature_init: float = Field(0.07, gt=0)


class TrainConfig(_Section):
    loss: Literal["fvlm", "clip"] = "fvlm"
    normal_positives: bool = True
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
    log_every: int = Field(1, ge=1)               # MLflow metric logging interval (steps)
    coteaching_ema: float = Field(0.99, ge=0.0, lt=1.0)  # EMA decay of the co-teaching peer model
    deterministic: bool = False                   # torch.use_deterministic_algorithms (CPU tests / exact resume)


class EvaluateConfig(_Section):
    bootstrap: int = Field(1000, ge=0)
    prompts_file: str | None = None
    promote_alias: str = "champion"
    eval_mode: Literal["anatomy", "center"] = "anatomy"   # reader's deterministic crop for evaluation
    batch_size: int = Field(4, ge=1)
    threshold_method: Literal["youden", "f1"] = "youden"  # chosen on val, applied to test
    ci_level: float = Field(0.95, gt=0.0, lt=1.0)
    seed: int = 0


class TrackingConfig(_Section):
    mlflow_tracking_uri: str = "sqlite:///mlflow.db"
    experiment: str = "fvlm"
    registered_model: str = "fvlm-ct"
    prefect_api_url: str | None = None
    enabled: bool = True                          # False: no MLflow at all (metrics files still written)
    register_model: bool = True                   # log + register the final model as a new version
    log_checkpoints: bool = True                  # checkpoints (last, best) as run artifacts
    system_metrics: bool = False                  # mlflow system metrics (needs psutil; off by default)
    artifact_location: str | None = None          # new experiments' artifact root (default: MLflow's)


class OrchestrationConfig(_Section):
    stage_flows: bool = True                    # `fvlm convert/segment/shard` run their Prefect flows
    task_runner: Literal["threads", "processes", "dask"] = "threads"
    batch_size: int = Field(16, ge=1)           # studies per Prefect task
    max_workers: int = Field(2, ge=1)
    retries: int = Field(2, ge=0)
    retry_delay_s: float = Field(10.0, ge=0)     # exponential backoff base for transient failures
    ingest_cron: str = "0 2 * * *"
    train_cron: str = "0 4 * * 6"
    watch_dir: str = "data/incoming"
    dask_address: str | None = None             # tcp://scheduler:8786; None -> LocalCluster of max_workers
    gpu_concurrency_limit: str | None = "fvlm-gpu"  # Prefect global concurrency limit held per GPU batch
    work_pool: str = "fvlm-process"             # process work pool for prefect.yaml deployments
    timezone: str = "UTC"                       # of the cron schedules


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
        out: dict[str, Any] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict):
                for key, sub in value.items():
                    walk(f"{prefix}.{key}" if prefix else str(key), sub)
            else:
                out[prefix] = value

        walk("", self.model_dump(mode="json", exclude={"root"}))
        return out


_ENV_OVERRIDES: dict[str, tuple[str, ...]] = {
    "FVLM_DATA_DIR": ("paths", "data_dir"),
    "FVLM_SALT": ("privacy", "salt"),
    "MLFLOW_TRACKING_URI": ("tracking", "mlflow_tracking_uri"),
    "PREFECT_API_URL": ("tracking", "prefect_api_url"),
    "FVLM_DVC_REMOTE": ("paths", "dvc_remote"),
    "TOTALSEG_HOME_DIR": ("segment", "totalseg_home"),
}


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _format_validation_error(source: str, error: ValidationError) -> str:
    lines = [f"{source}: invalid configuration"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "<root>"
        lines.append(f"  key '{key}': {item['msg']}")
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
    profiles = data.pop("profiles", {}) or {}
    chosen = profile or environ.get("FVLM_PROFILE") or data.get("profile") or "demo"
    if chosen not in profiles and chosen not in ("demo",):
        known = ", ".join(sorted(profiles)) or "none"
        raise ConfigError(f"{source}: key 'profile': unknown profile {chosen!r} (defined: {known})")
    if not isinstance(profiles.get(chosen, {}), dict):
        raise ConfigError(f"{source}: key 'profiles.{chosen}' must be a mapping")
    data = _deep_merge(data, profiles.get(chosen, {}) or {})
    data["profile"] = chosen
    for variable, (section, key) in _ENV_OVERRIDES.items():
        if environ.get(variable):
            data.setdefault(section, {})
            if not isinstance(data[section], dict):
                raise ConfigError(f"{source}: key '{section}' must be a mapping")
            data[section][key] = environ[variable]
    data["root"] = root
    try:
        return FvlmConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_format_validation_error(source, error)) from None


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
