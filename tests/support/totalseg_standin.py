"""Stand-in TotalSegmentator weight releases: tiny real nnU-Net v2 models, zipped exactly like the real ones.

For a card of ``models/totalseg/cards``, every part (dataset id, folder name, trainer, plans, configuration,
label names and count) is taken from the card, which in turn is TotalSegmentator's own tables. Each part is
a real nnU-Net v2 trained-model folder written in nnU-Net's format: ``plans.json`` (a 3-stage PlainConvUNet,
32³ patch, CT normalisation, the task's spacing), ``dataset.json`` (TotalSegmentator's label names) and
``fold_0/checkpoint_final.pth`` (seeded random weights, ``network_weights`` / ``init_args`` / ``trainer_name``
as nnU-Net's trainer saves them). The zip holds ``<DatasetNNN_name>/<trainer>__<plans>__<configuration>/...``,
as TotalSegmentator's release zips do (it unpacks them into its weights dir), and is served from
``<root>/<release>/<DatasetNNN_name>.zip`` like the GitHub release assets.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import io
import json
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

from models.card import ModelCard
from models.testing.tiny_unet import TINY_PLAIN_UNET
from models.totalseg import tasks

PATCH = [32, 32, 32]


def _plans(dataset_name: str, plans_name: str, spacing_xyz: list[float]) -> dict[str, Any]:
    spacing = list(reversed(spacing_xyz))  # nnU-Net plans are [z, y, x]
    resampling = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    return {
        "dataset_name": dataset_name,
        "plans_name": plans_name,
        "original_median_spacing_after_transp": spacing,
        "original_median_shape_after_transp": [64, 64, 64],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {
            "3d_fullres": {
                "data_identifier": f"{plans_name}_3d_fullres",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2,
                "patch_size": PATCH,
                "median_image_size_in_voxels": [64, 64, 64],
                "spacing": spacing,
                "normalization_schemes": ["CTNormalization"],
                "use_mask_for_norm": [False],
                "resampling_fn_data": "resample_data_or_seg_to_shape",
                "resampling_fn_seg": "resample_data_or_seg_to_shape",
                "resampling_fn_data_kwargs": resampling,
                "resampling_fn_seg_kwargs": {**resampling, "is_seg": True, "order": 1},
                "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                "resampling_fn_probabilities_kwargs": {**resampling, "order": 1},
                "architecture": TINY_PLAIN_UNET,
                "batch_dice": False,
            }
        },
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {
                "max": 1500.0,
                "mean": 40.0,
                "median": 40.0,
                "min": -1024.0,
                "percentile_00_5": -1000.0,
                "percentile_99_5": 1000.0,
                "std": 300.0,
            }
        },
    }


def _checkpoint(n_classes: int, trainer: str, seed: int, background_bias: float) -> bytes:
    torch.manual_seed(seed)
    arch = TINY_PLAIN_UNET
    net = get_network_from_plans(
        arch["network_class_name"],
        arch["arch_kwargs"],
        arch["_kw_requires_import"],
        1,
        n_classes,
        allow_init=True,
        deep_supervision=False,
    )
    with torch.no_grad():
        # Sharpen the random output layer so that many classes win somewhere, and favour background so that
        # a part leaves room for the others (a merge test needs labels of every part in the result).
        for name, param in net.named_parameters():
            if "seg_layers" in name:
                param.mul_(25.0)
                if name.endswith("bias"):
                    param[0] += background_bias
    buffer = io.BytesIO()
    torch.save(
        {
            "network_weights": net.state_dict(),
            "init_args": {"plans": {}, "configuration": "3d_fullres", "fold": 0, "dataset_json": {}},
            "trainer_name": trainer,
            "inference_allowed_mirroring_axes": None,
            "current_epoch": 1,
        },
        buffer,
    )
    return buffer.getvalue()


def write_release(card: ModelCard, root: Path, seed: int = 0) -> list[Path]:
    """Write the card's part zips under ``root/<release>/<folder>.zip``; returns their paths."""
    p = card.params
    written = []
    for index, part in enumerate(tasks.parts(card)):
        labels = {str(v): int(k) for k, v in part["labels"].items()}
        n_classes = len(labels) + 1
        dataset = {
            "channel_names": {"0": "CT"},
            "labels": {"background": 0, **labels},
            "numTraining": 1,
            "file_ending": ".nii.gz",
        }
        model = f"{part['folder']}/{p['trainer']}__{p['plans']}__{p['configuration']}"
        zip_path = root / str(part["release"]) / f"{part['folder']}.zip"
        zip_path.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(f"{model}/dataset.json", json.dumps(dataset, indent=1))
            plans = _plans(str(part["folder"]), str(p["plans"]), [float(s) for s in p["resample_mm"]])  # type: ignore[attr-defined]
            zf.writestr(f"{model}/plans.json", json.dumps(plans, indent=1))
            zf.writestr(
                f"{model}/fold_0/checkpoint_final.pth",
                _checkpoint(n_classes, str(p["trainer"]), seed + index, 20.0 + 20.0 * index),
            )
        written.append(zip_path)
    return written


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def serve(root: Path) -> Iterator[str]:
    """Serve ``root`` over HTTP on 127.0.0.1 (a stand-in for the GitHub release host); yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def write_ct_crop(source: Path, target: Path) -> Path:
    """A 30x26x10 crop (3 mm) of TotalSegmentator's example CT, stored flipped left-right (LAS) so that
    TotalSegmentator's reorientation to RAS and back is exercised."""
    img = nib.load(source)
    start = np.array([40, 30, 8])
    arr = np.asanyarray(img.dataobj)[40:70, 30:56, 8:18][::-1].copy()  # type: ignore[attr-defined]
    affine = img.affine.copy()  # type: ignore[attr-defined]
    affine[:3, 3] += affine[:3, :3] @ start + affine[:3, 0] * (arr.shape[0] - 1)
    affine[:3, 0] *= -1
    nib.save(nib.Nifti1Image(arr, affine), target)
    return target
