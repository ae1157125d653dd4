"""A bundle's input channels and output labels, read from ``metadata.json`` (torch-free).

Inputs: ``network_data_format.inputs.image`` gives ``num_channels`` and ``channel_def`` (e.g. BraTS:
{"0": "T1c", "1": "T1", "2": "T2", "3": "FLAIR"}). Each channel gets a form name for uploads: the
channel_def name lower-cased, runs of other characters than a-z and 0-9 turned into "_" ("t1c", "flair"),
or ``channel<i>`` when the bundle names none.

Outputs: ``outputs.pred.channel_def``. With a softmax (or no) activation the channels are classes and
channel 0 is background, so the label value is the channel index. With ``Activationsd(sigmoid=True)``
every channel is a region of its own (multi-label, e.g. BraTS: 0 tumour core, 1 whole tumour, 2
enhancing tumour) and region ``c`` becomes label value ``c + 1``, 0 being background; how overlapping
regions become one label map is :mod:`models.regions`.
"""

from __future__ import annotations

import re
from typing import Any

from models.installed import InstallError

MAX_INPUT_CHANNELS = 16
MAX_SIGMOID_REGIONS = 16  # regions are kept as bits of a uint16 per voxel (models.sliding)
_NAME = re.compile(r"^[a-z0-9][a-z0-9_]{0,31}$")


class BundleError(InstallError):
    """A bundle directory cannot be used; the message names the file, the key and the bad value."""


def channel_form_name(name: str) -> str:
    """The upload name of a channel: "FLAIR" -> "flair", "T1 post-contrast" -> "t1_post_contrast"."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")[:32]


def input_channels(image: dict[str, Any], network_in: object, where: str) -> tuple[str, ...]:
    """Form names of the input channels, in the network's channel order.

    Args:
        image: metadata ``inputs.image``.
        network_in: ``network_def.in_channels`` (None when there is no network_def).
    Raises:
        BundleError: counts disagree, or two channels get the same name.
    """
    count = image.get("num_channels", network_in if network_in is not None else 1)
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_INPUT_CHANNELS:
        raise BundleError(
            f"{where}: inputs.image.num_channels must be 1..{MAX_INPUT_CHANNELS}, got {count!r}"
        )
    if network_in is not None and network_in != image.get("num_channels", count):
        raise BundleError(
            f"{where}: inputs.image has {count} channels but network_def.in_channels is {network_in}"
        )
    channel_def = image.get("channel_def")
    if isinstance(channel_def, dict) and 0 < len(channel_def) < count:
        # the channels beyond channel_def are made by the pre-processing (DeepEdit: 1 image + 2 click
        # guidance channels), so a case gives only the named ones
        count = len(channel_def)
    if not isinstance(channel_def, dict) or len(channel_def) != count:
        return tuple(f"channel{i}" for i in range(count)) if count > 1 else ("image",)
    try:
        by_index = {int(k): str(v) for k, v in channel_def.items()}
    except ValueError:
        raise BundleError(
            f"{where}: inputs.image.channel_def keys must be integers, got {list(channel_def)}"
        ) from None
    if sorted(by_index) != list(range(count)):
        raise BundleError(
            f"{where}: inputs.image.channel_def must name channels 0..{count - 1}, got {sorted(by_index)}"
        )
    names = tuple(channel_form_name(by_index[i]) or f"channel{i}" for i in range(count))
    if len(set(names)) != count or not all(_NAME.fullmatch(n) for n in names):
        raise BundleError(
            f"{where}: input channel names {names} must be distinct (from channel_def {channel_def})"
        )
    return names


def output_labels(pred: dict[str, Any], sigmoid: bool, where: str) -> dict[int, str]:
    """Label value -> name. Softmax: channel c is value c (0 background). Sigmoid: region c is c + 1."""
    channel_def = pred.get("channel_def")
    count = pred.get("num_channels")
    if isinstance(channel_def, dict) and channel_def:
        try:
            names = {int(k): str(v) for k, v in channel_def.items()}
        except ValueError:
            raise BundleError(
                f"{where}: channel_def keys must be integers, got {list(channel_def)}"
            ) from None
    elif isinstance(count, int) and count >= (1 if sigmoid else 2):
        names = {c: f"region-{c}" if sigmoid else f"class-{c}" for c in range(count)}
        if not sigmoid:
            names[0] = "background"
    else:
        raise BundleError(f"{where}: outputs.pred needs channel_def or num_channels >= 2, got {pred!r}")
    if sorted(names) != list(range(len(names))):
        raise BundleError(f"{where}: output channels must be 0..N-1, got {sorted(names)}")
    # num_channels disagreeing with channel_def (vista3d: 1 vs 133 names) is left as MONAI leaves it: the
    # label values the bundle really writes are probed at install (models.bundle.build.probe_labels)
    if not sigmoid:
        return names
    if len(names) > MAX_SIGMOID_REGIONS:
        raise BundleError(f"{where}: at most {MAX_SIGMOID_REGIONS} sigmoid output channels, got {len(names)}")
    return {0: "background", **{c + 1: name for c, name in sorted(names.items())}}
