"""bench/gpu.py, the prepared GPU script of #16, runs end to end: on the CPU with its small inputs here (CI
has no GPU; on a GPU the same code runs with ``--device cuda`` and the full sizes).

Every side runs for real (the MeshNet forward fp32 and under bf16 autocast, file to file, pipelined, the
service with a worker on the device, the Zoo spleen bundle's inferer and the service's bundle predictor);
the check is that each prints a time and that bf16's agreement is reported, not the figures themselves.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch

from tests.support.paths import DATA


def test_gpu_script_runs_every_side_on_the_cpu() -> None:
    if not (DATA / "dicom" / "mr-3slice").is_dir() or not (DATA.parent / "zoo").is_dir():
        pytest.skip("needs ../shared/data and ../shared/zoo")
    done = subprocess.run(
        [sys.executable, "-m", "bench.gpu", "--device", "cpu", "--quick", "--repeats", "1", "--cases", "2"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    out = done.stdout
    for side in ("bare fp32", "bare bf16", "file to file", "pipelined", "service", "predict"):
        assert re.search(rf"^  {side}\s+\d+\.\d+ s", out, re.MULTILINE), f"no time for {side}:\n{out}"
    assert re.search(r"bf16 agreement\s+\d+\.\d+ %", out)
    assert "goal: file to file under 1 s" in out
    assert "CT (96, 96, 48) -> spleen_ct_segmentation" in out


def test_gpu_script_says_so_without_a_gpu() -> None:
    done = subprocess.run([sys.executable, "-m", "bench.gpu"], capture_output=True, text=True, timeout=120)
    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    assert done.returncode == 2
    assert "no CUDA device here" in done.stdout
