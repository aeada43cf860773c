"""Random-weight stand-in checkpoints laid out exactly where TotalSegmentator looks for its models.

Used by tests and benchmarks on machines without the real weights (no network here): TotalSegmentator's
own code path (``totalsegmentator()`` and our warm :class:`~segmentation.totalseg.TotalSegmentatorBackend`)
then runs end to end, producing noise labels with the right ids, geometry and dtype. Recipe: shared
``docs/ENV.md`` ("TotalSegmentator 2.18"). NEVER point a production run at these weights.

    python -m segmentation.standin_weights WEIGHTS_DIR [--mode fast]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

# task `total` model folders per mode: (dataset folder, trainer, spacing mm, {task_id: class map part or None})
PLANS_NAME = "nnUNetPlans"
CONFIGURATION = "3d_fullres"
STANDIN_MARKER = "fvlm_standin.json"

MODE_MODELS: dict[str, tuple[str, float, tuple[int, ...]]] = {
    "fast": ("nnUNetTrainer_4000epochs_NoMirroring", 3.0, (297,)),
    "fastest": ("nnUNetTrainer_4000epochs_NoMirroring", 6.0, (298,)),
    "full": ("nnUNetTrainerNoMirroring", 1.5, (291, 292, 293, 294, 295)),
}


def model_folder_name(task_id: int) -> str:
    """TotalSegmentator's folder name for a task id (``Dataset297_TotalSegmentator_total_3mm_1559subj``)."""
    from totalsegmentator.map_tasks_config import TASK_ID_WEIGHTS_CONFIGS

    return str(TASK_ID_WEIGHTS_CONFIGS[task_id]["foldername"])


def model_dir(weights_dir: str | os.PathLike[str], task_id: int, trainer: str) -> Path:
    """``<weights>/<Dataset...>/<trainer>__nnUNetPlans__3d_fullres`` (nnU-Net v2 results layout)."""
    return Path(weights_dir) / model_folder_name(task_id) / f"{trainer}__{PLANS_NAME}__{CONFIGURATION}"


def task_labels(task_id: int) -> dict[int, str]:
    """Output channel -> class name of one model: the `total` ids for 297/298, part-local ids for 291-295."""
    from totalsegmentator.map_to_binary import class_map, class_map_5_parts, map_taskid_to_partname_ct

    if task_id in map_taskid_to_partname_ct:
        return {int(k): v for k, v in class_map_5_parts[map_taskid_to_partname_ct[task_id]].items()}
    return {int(k): v for k, v in class_map["total"].items()}


def _plans(dataset_name: str, spacing_mm: float) -> dict:
    return {
        "dataset_name": dataset_name,
        "plans_name": PLANS_NAME,
        "original_median_spacing_after_transp": [spacing_mm] * 3,
        "original_median_shape_after_transp": [64, 128, 128],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {
            CONFIGURATION: {
                "data_identifier": f"{PLANS_NAME}_{CONFIGURATION}",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2,
                "patch_size": [32, 64, 64],
                "median_image_size_in_voxels": [64, 128, 128],
                "spacing": [spacing_mm] * 3,
                "normalization_schemes": ["CTNormalization"],
                "use_mask_for_norm": [False],
                "resampling_fn_data": "resample_data_or_seg_to_shape",
                "resampling_fn_seg": "resample_data_or_seg_to_shape",
                "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
                "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
                "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                "resampling_fn_probabilities_kwargs": {
                    "is_seg": False,
                    "order": 1,
                    "order_z": 0,
                    "force_separate_z": None,
                },
                "architecture": {
                    "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                    "arch_kwargs": {
                        "n_stages": 3,
                        "features_per_stage": [4, 8, 16],
                        "conv_op": "torch.nn.modules.conv.Conv3d",
                        "kernel_sizes": [[3, 3, 3]] * 3,
                        "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
                        "n_conv_per_stage": [1, 1, 1],
                        "n_conv_per_stage_decoder": [1, 1],
                        "conv_bias": True,
                        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
                        "dropout_op": None,
                        "dropout_op_kwargs": None,
                        "nonlin": "torch.nn.LeakyReLU",
                        "nonlin_kwargs": {"inplace": True},
                    },
                    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
                },
                "batch_dice": False,
            }
        },
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {
                "max": 3071.0,
                "mean": 100.0,
                "median": 60.0,
                "min": -1024.0,
                "percentile_00_5": -1000.0,
                "percentile_99_5": 1500.0,
                "std": 350.0,
            }
        },
    }


def build_standin_model(
    weights_dir: str | os.PathLike[str], task_id: int, trainer: str, spacing_mm: float, *, seed: int = 0
) -> Path:
    """Write one random-weight nnU-Net v2 model folder (dataset.json, plans.json, fold_0 checkpoint)."""
    import torch

    for variable in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):  # quiets nnunetv2's import
        os.environ.setdefault(variable, str(weights_dir))
    import nnunetv2
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    folder = model_dir(weights_dir, task_id, trainer)
    checkpoint_path = folder / "fold_0" / "checkpoint_final.pth"
    if checkpoint_path.is_file():
        return folder
    labels = task_labels(task_id)
    dataset_json = {
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, **{name: class_id for class_id, name in sorted(labels.items())}},
        "numTraining": 1,
        "file_ending": ".nii.gz",
    }
    plans = _plans(folder.parent.name, spacing_mm)
    trainer_class = recursive_find_python_class(
        str(Path(nnunetv2.__path__[0]) / "training" / "nnUNetTrainer"), trainer, "nnunetv2.training.nnUNetTrainer"
    )
    if trainer_class is None:
        raise RuntimeError(f"nnU-Net trainer {trainer!r} not found in this nnunetv2 install")
    architecture = plans["configurations"][CONFIGURATION]["architecture"]
    torch.manual_seed(seed + task_id)
    network = trainer_class.build_network_architecture(
        architecture["network_class_name"],
        architecture["arch_kwargs"],
        architecture["_kw_requires_import"],
        1,
        max(labels) + 1,
        enable_deep_supervision=False,
    )
    (folder / "fold_0").mkdir(parents=True, exist_ok=True)
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=1))
    (folder / "plans.json").write_text(json.dumps(plans, indent=1))
    (folder / STANDIN_MARKER).write_text(json.dumps({"standin": True, "random_seed": seed + task_id}))
    checkpoint = {
        "network_weights": network.state_dict(),
        "trainer_name": trainer,
        "init_args": {"configuration": CONFIGURATION},
        "inference_allowed_mirroring_axes": None,
    }
    tmp = checkpoint_path.with_suffix(".pth.tmp")
    torch.save(checkpoint, tmp)
    tmp.replace(checkpoint_path)
    return folder


def build_standin_weights(
    weights_dir: str | os.PathLike[str], modes: tuple[str, ...] = ("fast",), *, include_roi_crop_model: bool = False
) -> Path:
    """Stand-in models for the given modes of task `total` under ``weights_dir`` (idempotent).

    ``include_roi_crop_model`` also writes the 6 mm model (298) that TotalSegmentator uses for its
    ``roi_subset`` rough crop.
    """
    weights = Path(weights_dir)
    wanted = list(modes) + (["fastest"] if include_roi_crop_model and "fastest" not in modes else [])
    for mode in wanted:
        trainer, spacing_mm, task_ids = MODE_MODELS[mode]
        for task_id in task_ids:
            build_standin_model(weights, task_id, trainer, spacing_mm)
    return weights


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights_dir")
    parser.add_argument("--mode", action="append", choices=sorted(MODE_MODELS), default=None)
    args = parser.parse_args(argv)
    out = build_standin_weights(args.weights_dir, tuple(args.mode or ["fast"]), include_roi_crop_model=True)
    print(f"stand-in TotalSegmentator weights (random, NOT for real use) in {out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
