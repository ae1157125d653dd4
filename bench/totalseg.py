"""TotalSegmentator task through segserve's pipeline vs TotalSegmentator's own python_api, same run.

Stand-in weights (tests/support/totalseg_standin.py: tiny real nnU-Net v2 models laid out like the release),
pulled with ``models.totalseg.pull`` from a ``file://`` mirror, then one scan through both. Prints wall time
of each (ours in this process, load included; theirs in a child process, as a user runs it, import included),
the ratio, the peak RSS of each, and whether the labels are equal. With tiny networks this measures the
pipeline around the networks (resampling, nnU-Net pre/post-processing, process start-up), not the networks.

    PYTHONPATH=$PWD .venv/bin/python -m bench.totalseg [--card totalseg-total] [--scan PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from tests.support.paths import DATA

SCAN = DATA / "ct" / "abdomen-totalseg" / "example_ct_sm.nii.gz"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--card", default="totalseg-total")
    parser.add_argument("--scan", type=Path, default=SCAN)
    args = parser.parse_args()

    from models.catalog import Catalog
    from models.totalseg import pull, tasks
    from models.totalseg.predictor import TotalSegPredictor, validate_staged
    from segserve.scans.readers import read_image
    from tests.support.totalseg_standin import write_release

    tmp = Path(tempfile.mkdtemp(prefix="bench_totalseg_"))
    card = tasks.task_card(args.card)
    write_release(card, tmp / "release")
    pull.pull(card.id, tmp / "models", base=(tmp / "release").as_uri(), validate=validate_staged)
    card = Catalog(tmp / "models").status(card.id).card

    start = time.perf_counter()
    predictor = TotalSegPredictor.load(card, tmp / "models")
    ours = predictor.predict(read_image([args.scan]))
    ours_s = time.perf_counter() - start
    ours_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before any child starts

    home = tmp / "tshome"
    home.mkdir()
    (home / "config.json").write_text(
        json.dumps({"totalseg_id": "bench", "send_usage_stats": False, "prediction_counter": 0})
    )
    env = {
        **os.environ,
        "TOTALSEG_HOME_DIR": str(home),
        "TOTALSEG_WEIGHTS_PATH": str(tasks.home_dir(tmp / "models", card.id) / "nnunet" / "results"),
    }
    fast = card.params["mode"] == "fast"
    code = (
        "from totalsegmentator.python_api import totalsegmentator\n"
        f"totalsegmentator({str(args.scan)!r}, {str(tmp / 'ts.nii.gz')!r}, ml=True, fast={fast}, "
        f"task={card.params['totalseg_task']!r}, device='cpu', quiet=True)\n"
        # VmHWM, not ru_maxrss: a child's ru_maxrss starts from its parent's high-water mark.
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
        "print(int(hwm) / 1024)\n"
    )
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True)
    theirs_s = time.perf_counter() - start
    theirs_rss_mb = float(out.stdout.strip().splitlines()[-1])
    theirs = np.asanyarray(nib.load(tmp / "ts.nii.gz").dataobj)

    print(f"card {card.id}, scan {args.scan.name} {ours.shape}")
    print(
        f"(a) TotalSegmentator python_api (child process): {theirs_s:.1f} s, peak RSS {theirs_rss_mb:.0f} MB"
    )
    print(f"(b) segserve TotalSegPredictor (load + predict): {ours_s:.1f} s, peak RSS {ours_rss_mb:.0f} MB")
    print(f"ratio b/a: {ours_s / theirs_s:.2f}")
    print(f"labels equal: {np.array_equal(ours, theirs)} ({np.mean(ours != theirs):.4%} of voxels differ)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
