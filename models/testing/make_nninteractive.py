"""A tiny nnInteractive model folder with seeded random weights, for tests and benches without internet.

Run: ``python -m models.testing.make_nninteractive OUT [--seed 0]`` writes ``OUT/nnInteractive_tiny/``, laid
out as the published checkpoints are (``MIC-DKFZ/nnInteractive`` on Hugging Face, e.g.
``nnInteractive_v1.0/``):

    dataset.json                   one input channel, labels background / object
    plans.json                     nnU-Net plans with one configuration "3d_fullres": patch 64^3 (the
                                   published model: 192^3), a PlainConvUNet of 3 stages with 4/8/16 features
    inference_session_class.json   the session metadata nnInteractive reads (point radius, scribble
                                   thickness, interaction decay); its legacy channel layout: prev_seg, then
                                   (+, -) pairs for boxes/lasso, points and scribbles (7 interaction channels)
    fold_0/checkpoint_final.pth    nnU-Net's checkpoint keys the session reads: ``network_weights`` (the
                                   network built from the plans by nnU-Net with 1 + 7 input channels and 2
                                   outputs, nnU-Net's own initialisation under ``torch.manual_seed(seed)``),
                                   ``trainer_name``, ``init_args.configuration``
    LICENSE                        first line: the licence id the session shows

The weights are random: the masks mean nothing, but every step of the session (normalisation, point and box
channels, auto-zoom, refinement, pasting into the target buffer) runs as with the real model.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from models.testing.tiny_unet import TINY_PLAIN_UNET

NAME = "nnInteractive_tiny"
PATCH = (64, 64, 64)  # > 2 x 24: the session's refinement keeps a 24-voxel margin in each patch
INTERACTION_CHANNELS = 7  # prev_seg + 3 (+, -) pairs: the legacy layout of the published v1.0 model


def plans() -> dict[str, Any]:
    """nnU-Net plans of one small 3d_fullres configuration (what PlansManager and the session read)."""
    config = {
        "data_identifier": "nnUNetPlans_3d_fullres",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2,
        "patch_size": list(PATCH),
        "median_image_size_in_voxels": [64, 64, 64],
        "spacing": [1.0, 1.0, 1.0],
        "normalization_schemes": ["ZScoreNormalization"],
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
        "architecture": TINY_PLAIN_UNET,
        "batch_dice": False,
    }
    return {
        "dataset_name": "Dataset999_nnInteractiveTiny",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [1.0, 1.0, 1.0],
        "original_median_shape_after_transp": [64, 64, 64],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {"3d_fullres": config},
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {},
    }


def write_model_folder(out: Path, seed: int = 0, name: str = NAME) -> Path:
    """Write the model folder ``out/name`` (see the module docstring); returns it."""
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    folder = Path(out) / name
    (folder / "fold_0").mkdir(parents=True, exist_ok=True)
    dataset = {
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, "object": 1},
        "numTraining": 1,
        "file_ending": ".nii.gz",
    }
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=1))
    (folder / "plans.json").write_text(json.dumps(plans(), indent=1))
    session_info = {"point_radius": 4, "preferred_scribble_thickness": [2, 2, 2], "interaction_decay": 0.9}
    (folder / "inference_session_class.json").write_text(json.dumps(session_info, indent=1))
    (folder / "LICENSE").write_text(
        "CC0-1.0\nrandom test weights made by models/testing/make_nninteractive.py\n"
    )
    manager = PlansManager(plans())
    config = manager.get_configuration("3d_fullres")
    torch.manual_seed(seed)
    network = get_network_from_plans(
        config.network_arch_class_name,
        config.network_arch_init_kwargs,
        config.network_arch_init_kwargs_req_import,
        determine_num_input_channels(manager, config, dataset) + INTERACTION_CHANNELS,
        2,
        allow_init=True,
        deep_supervision=False,
    )
    checkpoint = {
        "network_weights": network.state_dict(),
        # not a class nnInteractive or nnU-Net defines: the session falls back to its trainer stub, as for
        # the published checkpoints
        "trainer_name": "nnInteractiveTrainerTiny",
        "init_args": {"configuration": "3d_fullres"},
    }
    torch.save(checkpoint, folder / "fold_0" / "checkpoint_final.pth")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(write_model_folder(args.out, args.seed))


if __name__ == "__main__":
    main()
