"""Peak memory of a 14-class 3D UNet prediction stays bounded (child process, its VmHWM / ru_maxrss).

The suite runs 192 x 192 x 160 (about 25 s on 2 cores); the full 512 x 512 x 400 figure comes from the same
probe run by hand: ``.venv/bin/python -m tests.models.bundle_memory_probe --shape 512 512 400``. What makes
the bound scale is the stitching buffer (14 x 96 x Y x Z, float16 past 512 MiB; tested in test_sliding),
not the number of voxels.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
LIMIT_MB = 4096


def test_peak_memory_of_a_14_class_unet_stays_under_4_gb(tmp_path: Path) -> None:
    err = tmp_path / "stderr.txt"
    with err.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.models.bundle_memory_probe", "--shape", "192", "192", "160"],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        assert proc.stdout is not None
        out = proc.stdout.read()
        # this child's own rusage (RUSAGE_CHILDREN would count the stacks of other tests in this process too)
        _, status, usage = os.wait4(proc.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, err.read_text()[-3000:]
    figures = json.loads(out.strip().splitlines()[-1])
    child_peak_mb = usage.ru_maxrss / 1024
    assert figures["peak_rss_mb"] < LIMIT_MB, figures
    assert child_peak_mb < LIMIT_MB, child_peak_mb
    # The growth during predict: buffer (14 x 96 x 192 x 160 float32 = 165 MB) + activations + labels.
    assert figures["peak_rss_mb"] - figures["peak_rss_mb_before_predict"] < 2500, figures
