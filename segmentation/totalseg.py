"""TotalSegmentator backend: task ``total`` through nnU-Net's in-process predictor, kept warm across batches.

``totalsegmentator()`` rebuilds the nnU-Net predictor (reads plans, loads the checkpoint, builds the
network) and writes temporary NIfTI files for every call, and its ``predict_from_files`` spawns worker
processes. :class:`TotalSegmentatorBackend` loads each model once and then, per study, does what
``totalsegmentator.nnunet.nnUNet_predict_image`` does, in memory:

1. optional rough crop (``roi_subset``): the 6 mm (or, robust, 3 mm) model segments the study, the
   volume is cropped to the set's classes + 20 mm (TotalSegmentator's ``crop_addon`` for roi_subset);
2. closest canonical orientation, resampling to the mode's spacing (order 1, ``change_spacing``);
3. ``nnUNetPredictor.predict_single_npy_array`` (array transposed to SimpleITK's (z, y, x), as the
   models were trained with SimpleITKIO), tile step 0.8 as TotalSegmentator uses for ``total``;
4. full mode: the 5 part models' outputs mapped to ``total`` ids through TotalSegmentator's class maps;
5. nearest resampling back, undo canonical, undo crop: a uint8 label map on the volume's exact grid.

Weights are looked up where TotalSegmentator looks (``$TOTALSEG_WEIGHTS_PATH``, else
``$TOTALSEG_HOME_DIR/nnunet/results``); they are checked BEFORE any TotalSegmentator call that could
try to download them, and usage statistics are switched off first (``core.env.ensure_totalseg_config``).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TASK = "total"
ROI_CROP_ADDON_MM = (20, 20, 20)  # TotalSegmentator's crop_addon for roi_subset
TILE_STEP_SIZE = 0.8  # TotalSegmentator's step size for the `total` models

# mode -> (trainer, model spacing mm, task ids); TotalSegmentator's map_tasks_config for task `total`
MODE_MODELS: dict[str, tuple[str, float, tuple[int, ...]]] = {
    "fast": ("nnUNetTrainer_4000epochs_NoMirroring", 3.0, (297,)),
    "fastest": ("nnUNetTrainer_4000epochs_NoMirroring", 6.0, (298,)),
    "full": ("nnUNetTrainerNoMirroring", 1.5, (291, 292, 293, 294, 295)),
}
DOWNLOAD_TASK_NAME = {"fast": "total_fast", "fastest": "total_fast", "full": "total"}


_PREDICTOR_LOADS = [0]  # predictor sets this process built (TotalSegmentatorBackend.load); tests read it


def predictor_loads() -> int:
    """How many times this process built a backend's predictors (once per warm backend, not per batch)."""
    return _PREDICTOR_LOADS[0]


class WeightsMissingError(RuntimeError):
    """The TotalSegmentator model folder is absent; the message says how to install it."""


@dataclass
class _LoadedModel:
    task_id: int
    spacing_mm: float
    predictor: Any
    lut: Any  # uint8 array: model channel -> `total` id
    class_names: dict[int, str]  # model channel -> class name


def totalseg_weights_dir(home_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where TotalSegmentator reads weights: $TOTALSEG_WEIGHTS_PATH, else <home>/nnunet/results."""
    if os.environ.get("TOTALSEG_WEIGHTS_PATH"):
        return Path(os.environ["TOTALSEG_WEIGHTS_PATH"])
    if home_dir is None:
        home_dir = os.environ.get("TOTALSEG_HOME_DIR") or (Path.home() / ".totalsegmentator")
    return Path(home_dir) / "nnunet" / "results"


def configure_nnunet_paths(weights_dir: str | os.PathLike[str]) -> None:
    """Point nnU-Net at ``weights_dir`` (what TotalSegmentator's ``setup_nnunet`` does via the env).

    nnunetv2 copies ``nnUNet_results`` & co. into module globals at import time, so when it was
    imported before the variables were set (another library, a test session) the env alone is not
    enough: the already-imported modules' copies are updated too.
    """
    import sys

    value = str(weights_dir)
    for variable in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ[variable] = value
    for name, module in list(sys.modules.items()):
        if name.startswith("nnunetv2") and module is not None:
            for variable in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
                if hasattr(module, variable):
                    setattr(module, variable, value)


def resolve_device(device: str) -> str:
    """'auto' | 'cpu' | 'gpu' | 'cuda' -> 'cpu' or 'cuda' (auto: cuda when torch sees a GPU)."""
    import torch

    if device in ("gpu", "cuda") or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} requested but torch sees no CUDA GPU")
        return "cuda"
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return "cpu"
    raise ValueError(f"unknown device {device!r}; use auto, cpu or gpu")


def parts_for_classes(mode: str, class_names: list[str] | None) -> tuple[int, ...]:
    """Task ids of the mode's models that predict any of ``class_names`` (all when None)."""
    from totalsegmentator.map_to_binary import class_map_5_parts, map_taskid_to_partname_ct

    task_ids = MODE_MODELS[mode][2]
    if mode != "full" or not class_names:
        return task_ids
    wanted = set(class_names)
    return tuple(tid for tid in task_ids if wanted & set(class_map_5_parts[map_taskid_to_partname_ct[tid]].values()))


class TotalSegmentatorBackend:
    """Warm TotalSegmentator `total` segmenter: ``load()`` once, ``segment(image)`` per study.

    ``roi_subset``: class names the caller needs (e.g. an anatomy set's classes). It is used only when
    that is faster and safe: in ``full`` mode only the part models holding those classes run, and a
    rough crop is done with a model coarser than the main one (``fastest`` 6 mm model, or the 3 mm model
    when ``roi_subset_robust``, TotalSegmentator's advice for small organs). With a crop the output
    keeps only the subset's classes (as TotalSegmentator does).
    """

    name = "totalsegmentator"

    def __init__(
        self,
        *,
        mode: str = "fast",
        device: str = "auto",
        roi_subset: list[str] | None = None,
        roi_subset_robust: bool = True,
        home_dir: str | os.PathLike[str] | None = None,
        quiet: bool = True,
    ) -> None:
        if mode not in MODE_MODELS:
            raise ValueError(f"unknown TotalSegmentator mode {mode!r}; use one of {sorted(MODE_MODELS)}")
        self.mode = mode
        self.device_request = device
        self.roi_subset = sorted(set(roi_subset)) if roi_subset else None
        self.roi_subset_robust = roi_subset_robust
        self.home_dir = Path(home_dir) if home_dir else None
        self.quiet = quiet
        self._models: list[_LoadedModel] = []
        self._crop_model: _LoadedModel | None = None
        self._model_id: str | None = None
        self.device: str | None = None

    # ------------------------------------------------------------------ setup
    @property
    def main_task_ids(self) -> tuple[int, ...]:
        return parts_for_classes(self.mode, self.roi_subset)

    @property
    def crop_task_id(self) -> int | None:
        """Rough-crop model, only when a subset is given and that model is coarser than the main one."""
        if not self.roi_subset:
            return None
        crop_id, crop_spacing = (297, 3.0) if self.roi_subset_robust else (298, 6.0)
        return crop_id if crop_spacing > MODE_MODELS[self.mode][1] else None

    def required_model_dirs(self) -> list[Path]:
        from segmentation.standin_weights import model_dir

        weights = totalseg_weights_dir(self.home_dir)
        trainer = MODE_MODELS[self.mode][0]
        dirs = [model_dir(weights, tid, trainer) for tid in self.main_task_ids]
        if self.crop_task_id is not None:
            dirs.append(model_dir(weights, self.crop_task_id, MODE_MODELS["fast"][0]))
        return dirs

    def check_weights(self) -> list[Path]:
        """Raise :class:`WeightsMissingError` (with install instructions) unless every model is on disk."""
        missing = [
            d
            for d in self.required_model_dirs()
            if not (d / "fold_0" / "checkpoint_final.pth").is_file() or not (d / "plans.json").is_file()
        ]
        if missing:
            weights = totalseg_weights_dir(self.home_dir)
            names = ", ".join(d.parent.name for d in missing)
            raise WeightsMissingError(
                f"TotalSegmentator weights for task 'total' mode '{self.mode}' not found in {weights} "
                f"(missing: {names}). Nothing is downloaded at run time. Install them: with internet, "
                f"`TOTALSEG_HOME_DIR={weights.parent.parent} totalseg_download_weights -t "
                f"{DOWNLOAD_TASK_NAME[self.mode]}`; on an air-gapped site, copy the weights zip there and run "
                f"`totalseg_import_weights -i <weights.zip>` (same TOTALSEG_HOME_DIR), or point "
                f"TOTALSEG_WEIGHTS_PATH / segment.totalseg_home at a folder that holds them."
            )
        return self.required_model_dirs()

    def _setup_environment(self) -> None:
        from core.env import apply_offline_env, ensure_totalseg_config

        apply_offline_env()
        home = self.home_dir or Path(os.environ.get("TOTALSEG_HOME_DIR") or Path.home() / ".totalsegmentator")
        ensure_totalseg_config(home)  # usage statistics off before TotalSegmentator reads its config
        configure_nnunet_paths(totalseg_weights_dir(self.home_dir))

    def _load_model(self, folder: Path, task_id: int, spacing_mm: float, device: str) -> _LoadedModel:
        import contextlib
        import io

        import numpy as np
        import torch
        import totalsegmentator.nnunet  # noqa: F401  (registers TotalSegmentator's custom trainers + patches)
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        from segmentation.standin_weights import task_labels

        # nnU-Net prints a notice for every CPU predictor; keep the stage's output readable when quiet
        with contextlib.redirect_stdout(io.StringIO()) if self.quiet else contextlib.nullcontext():
            predictor = nnUNetPredictor(
                tile_step_size=TILE_STEP_SIZE,
                use_gaussian=True,
                use_mirroring=False,
                perform_everything_on_device=device == "cuda",
                device=torch.device(device),
                verbose=False,
                verbose_preprocessing=False,
                allow_tqdm=not self.quiet,
            )
            predictor.initialize_from_trained_model_folder(
                str(folder), use_folds=[0], checkpoint_name="checkpoint_final.pth"
            )
        from totalsegmentator.map_to_binary import class_map

        class_names = task_labels(task_id)
        total_id = {name: int(cid) for cid, name in class_map[TASK].items()}
        lut = np.zeros(max(class_names) + 1, dtype=np.uint8)
        for channel, name in class_names.items():
            lut[channel] = total_id[name]
        return _LoadedModel(task_id, spacing_mm, predictor, lut, class_names)

    def load(self) -> TotalSegmentatorBackend:
        """Check weights, switch telemetry off, build the predictors once (idempotent)."""
        if self._models:
            return self
        self._setup_environment()
        dirs = self.check_weights()
        import multiprocessing

        import torch

        self.device = resolve_device(self.device_request)
        torch.set_num_threads(multiprocessing.cpu_count() if self.device == "cpu" else 1)
        spacing = MODE_MODELS[self.mode][1]
        for folder, task_id in zip(dirs, self.main_task_ids, strict=False):
            self._models.append(self._load_model(folder, task_id, spacing, self.device))
        if self.crop_task_id is not None:
            crop_spacing = 3.0 if self.crop_task_id == 297 else 6.0
            self._crop_model = self._load_model(dirs[-1], self.crop_task_id, crop_spacing, self.device)
        _PREDICTOR_LOADS[0] += 1
        return self

    @property
    def model_id(self) -> str:
        """Task, mode, model ids and a fingerprint of the checkpoints (recorded in the manifest).

        Computed from the model folders without loading them (raises WeightsMissingError when absent).
        """
        if self._model_id is None:
            self._model_id = self._model_id_on_disk()
        return str(self._model_id)

    def _model_id_on_disk(self) -> str:
        dirs = self.check_weights()
        digest = hashlib.sha256()
        for folder in dirs:
            digest.update(folder.parent.name.encode())
            checkpoint = folder / "fold_0" / "checkpoint_final.pth"
            stat = checkpoint.stat()
            digest.update(f"{stat.st_size}:{int(stat.st_mtime)}".encode())
        standin = any((folder / "fvlm_standin.json").is_file() for folder in dirs)
        return (
            f"{TASK}/{self.mode}/"
            + "+".join(str(t) for t in self.main_task_ids)
            + (f"/crop{self.crop_task_id}" if self.crop_task_id else "")
            + f"/{digest.hexdigest()[:12]}"
            + ("/STANDIN-random-weights" if standin else "")
        )

    def is_current(self) -> bool:
        """Whether the checkpoints on disk are still the ones this backend identified (a warm backend kept in a
        long-lived worker is dropped when the weights were replaced; a few ``stat`` calls, no load)."""
        return self._model_id is None or self._model_id_on_disk() == self._model_id

    def config_fingerprint(self, study_id: str | None = None) -> dict[str, Any]:
        """What determines a study's mask besides its volume (used for idempotent reruns)."""
        return {
            "backend": self.name,
            "mode": self.mode,
            "roi_subset": self.roi_subset,
            "roi_subset_robust": self.roi_subset_robust,
            "model_id": self.model_id,
        }

    def segment_study(self, study_id: str, image: Any) -> tuple[Any, list[str]]:
        """Backend protocol: (uint8 `total` ids on the image grid, warnings)."""
        ids = self.segment(image)
        warnings = ["stand-in random weights: labels are noise"] if "STANDIN" in self.model_id else []
        return ids, warnings

    def close(self) -> None:
        self._models.clear()
        self._crop_model = None

    # ------------------------------------------------------------------ inference
    def _predict(self, model: _LoadedModel, canonical_img: Any) -> Any:
        """Canonical float image -> `total` ids at the model spacing (nibabel image, same orientation)."""
        import nibabel as nib
        import numpy as np
        from totalsegmentator.resampling import change_spacing

        use_gpu = self.device == "cuda"
        resampled = change_spacing(
            canonical_img, [model.spacing_mm] * 3, order=1, dtype=np.int32, nr_cpus=1, use_gpu=use_gpu
        )
        data_xyz = np.asarray(resampled.dataobj, dtype=np.float32)
        spacing_xyz = [float(s) for s in resampled.header.get_zooms()[:3]]
        # nnU-Net was trained on SimpleITK-read arrays: axes (z, y, x), spacing reversed
        channels_zyx = model.predictor.predict_single_npy_array(
            data_xyz.transpose(2, 1, 0)[None], {"spacing": spacing_xyz[::-1]}
        )
        channels_xyz = np.asarray(channels_zyx).transpose(2, 1, 0)
        ids = model.lut[np.clip(channels_xyz, 0, len(model.lut) - 1).astype(np.int64)]
        return nib.Nifti1Image(ids.astype(np.uint8), resampled.affine), canonical_img.shape

    def _segment_canonical(self, canonical_img: Any) -> Any:
        import nibabel as nib
        import numpy as np
        from totalsegmentator.resampling import change_spacing

        combined = None
        for model in self._models:
            low_res, _ = self._predict(model, canonical_img)
            data = np.asarray(low_res.dataobj)
            if combined is None:
                combined = data.copy()
            else:  # later parts overwrite where they predict a class (TotalSegmentator's combination)
                np.copyto(combined, data, where=data != 0)
        low_res = nib.Nifti1Image(combined, low_res.affine)
        back = change_spacing(
            low_res,
            [self._models[0].spacing_mm] * 3,
            canonical_img.shape,
            order=0,
            dtype=np.uint8,
            nr_cpus=1,
            force_affine=canonical_img.affine,
            use_gpu=self.device == "cuda",
        )
        return np.asarray(back.dataobj).astype(np.uint8)

    def segment(self, image: Any) -> Any:
        """A nibabel CT image (any orientation, HU) -> uint8 `total` ids on exactly its voxel grid."""
        import nibabel as nib
        import numpy as np
        from totalsegmentator.alignment import as_closest_canonical, undo_canonical
        from totalsegmentator.cropping import crop_to_mask, undo_crop

        self.load()
        if len(image.shape) != 3:
            raise ValueError(f"expected a 3D volume, got shape {image.shape}")
        original = nib.Nifti1Image(np.asarray(image.dataobj, dtype=np.float32), image.affine)
        work = original
        bbox = None
        keep_ids: list[int] | None = None
        if self._crop_model is not None and self.roi_subset:
            from core.anatomy_sets import totalseg_name_to_id

            keep_ids = [totalseg_name_to_id()[name] for name in self.roi_subset]
            canonical = as_closest_canonical(original)
            rough, _ = self._predict(self._crop_model, canonical)
            from totalsegmentator.resampling import change_spacing

            rough_full = change_spacing(
                rough,
                [self._crop_model.spacing_mm] * 3,
                canonical.shape,
                order=0,
                dtype=np.uint8,
                nr_cpus=1,
                force_affine=canonical.affine,
            )
            rough_full = undo_canonical(rough_full, original)
            crop_mask = np.isin(np.asarray(rough_full.dataobj), keep_ids).astype(np.uint8)
            if crop_mask.sum() == 0:  # nothing of the subset here: empty result, like TotalSegmentator
                return np.zeros(image.shape, dtype=np.uint8)
            work, bbox = crop_to_mask(
                original, nib.Nifti1Image(crop_mask, original.affine), addon=list(ROI_CROP_ADDON_MM), dtype=np.float32
            )
        canonical = as_closest_canonical(work)
        labels_canonical = self._segment_canonical(canonical)
        labels = undo_canonical(nib.Nifti1Image(labels_canonical, canonical.affine), work)
        if bbox is not None:
            labels = undo_crop(labels, original, bbox)
        ids = np.asarray(labels.dataobj).astype(np.uint8)
        if keep_ids is not None:
            ids = ids * np.isin(ids, keep_ids)
        if ids.shape != tuple(image.shape):
            raise RuntimeError(f"internal error: mask shape {ids.shape} != volume shape {image.shape}")
        return ids.astype(np.uint8)


def segment_with_totalsegmentator_api(
    image: Any, *, mode: str = "fast", device: str = "cpu", roi_subset: list[str] | None = None, quiet: bool = True
) -> Any:
    """One study through TotalSegmentator's own ``totalsegmentator()`` (cold: model built per call).

    The reference the warm backend is benchmarked and checked against.
    """
    import numpy as np
    from totalsegmentator.python_api import totalsegmentator

    from core.env import ensure_totalseg_config

    home = os.environ.get("TOTALSEG_HOME_DIR") or str(Path.home() / ".totalsegmentator")
    ensure_totalseg_config(home)
    configure_nnunet_paths(totalseg_weights_dir(home))
    out = totalsegmentator(
        image,
        None,
        ml=True,
        fast=mode == "fast",
        fastest=mode == "fastest",
        device="gpu" if device in ("gpu", "cuda") else "cpu",
        roi_subset=roi_subset,
        nr_thr_saving=1,
        quiet=quiet,
    )
    return np.asarray(out.dataobj).astype(np.uint8)
