"""Reading a compressed NIfTI holds the volume once, not twice (nibabel's single readinto of the whole
volume through GzipFile would first build a bytes object of its size)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from tests.support.paths import REPO

_CHILD = """
import json, sys
from pathlib import Path
import numpy as np
from segserve.imaging.nifti import read_nifti

def status(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) * 1024

before = status("VmRSS:")
volume = read_nifti(Path(sys.argv[1]), "nifti")
print(json.dumps({"growth": status("VmHWM:") - before, "nbytes": volume.array.nbytes,
                  "sum": int(volume.array.sum(dtype=np.int64))}))
"""


def test_gzipped_volume_is_read_without_a_second_copy(tmp_path: Path) -> None:
    shape = (256, 256, 160)  # 20 MiB as int16
    array = (np.arange(np.prod(shape), dtype=np.int64) % 2048 - 1024).astype(np.int16).reshape(shape)
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(array, np.eye(4)), path)
    run = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path)], capture_output=True, text=True, cwd=REPO, check=True
    )
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["sum"] == int(array.sum(dtype=np.int64))
    # the volume plus a few 4 MiB read pieces; two copies would be 2 x nbytes
    assert result["growth"] < result["nbytes"] + (12 << 20) < 2 * result["nbytes"], result
