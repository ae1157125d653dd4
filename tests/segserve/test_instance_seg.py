"""A DICOM SEG with one segment per lesion instance, read back by dcmqi with every instance intact."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pytest

from evaluation.lesion_report import lesion_table
from models.catalog import builtin_cards
from segserve.dicom.seg import build_seg
from segserve.scans.seg_export import instance_card, read_dicom_volume_and_datasets
from tests.support.paths import DATA
from tests.support.seg_compare import dcmqi_read, place_on_grid

CARD = {c.id: c for c in builtin_cards()}["brain-mri-structures"]


def test_each_lesion_instance_is_its_own_segment_and_dcmqi_reads_them_intact(tmp_path: Path) -> None:
    folder = DATA / "dicom" / "ct-3slice"
    if not folder.is_dir():
        pytest.skip(f"shared DICOM data not found at {folder}")
    volume, datasets = read_dicom_volume_and_datasets(sorted(folder.glob("0*.dcm")))
    n = volume.shape[2]
    labels = np.zeros(volume.shape, dtype=np.uint8)
    labels[100:130, 200:220, 0:2] = 7  # two lesions of label 7 ...
    labels[300:310, 50:58, 1:3] = 7
    labels[131:140, 200:220, 0:2] = 14  # ... and one of label 14 touching the first: its own instance
    labels[400:402, 400:403, n - 1] = 7  # a small one on the last slice
    instances, table = lesion_table(labels, CARD.labels, [7, 14], volume.affine)
    assert table["n_lesions"] == 4
    seg_card = instance_card(CARD, table["lesions"])
    seg = build_seg(instances, datasets, seg_card)
    names = [s.SegmentLabel for s in seg.SegmentSequence]
    assert names == [seg_card.labels[i] for i in range(1, 5)] and len(set(names)) == 4
    assert names[0].startswith("lesion 1 (")
    path = tmp_path / "instances.seg.dcm"
    seg.save_as(path)
    theirs, their_affine = dcmqi_read(path, tmp_path / "dcmqi", seg_card.labels)
    back = place_on_grid(theirs, their_affine, instances.shape, volume.affine)
    np.testing.assert_array_equal(back, instances)
    for row in table["lesions"]:
        assert int(np.count_nonzero(back == row["id"])) == row["n_voxels"]
    assert hd.seg.segread(path).number_of_segments == 4
