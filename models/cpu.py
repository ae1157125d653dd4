"""Which CPU inference path a worker process uses: plain fp32, or bf16 where the CPU computes it natively.

The choice is made once per worker process at its start (``workers.tasks._init_process`` calls
:func:`select_cpu_path` with the machine's flags and the ``SEGSERVE_CPU_PRECISION`` setting) and handed to
the predictors through :func:`models.predictor.set_cpu_path`. A bf16 path is only a permission: each model
still uses it only where its recorded agreement with the fp32 forward passes (see
``models/calibration.py``); every other model keeps fp32.

Why these flags: oneDNN runs bf16 convolutions with native instructions only on CPUs with AVX512-BF16
(``vdpbf16ps``: AMD Zen 4 and later, Intel Cooper Lake) or AMX-BF16 (Intel Sapphire Rapids and later).
Elsewhere it converts to fp32 and back around the same fp32 kernels, which is slower than fp32 itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = ["FP32", "CpuPath", "bf16_isa", "cpu_flags", "select_cpu_path"]

Precision = Literal["fp32", "bf16"]
# Settings values: "auto" (bf16 where the CPU has it and the model's calibration passes) or "fp32" (force).
PRECISION_SETTINGS = ("auto", "fp32")


@dataclass(frozen=True)
class CpuPath:
    """The inference path of one worker process.

    ``precision``: "fp32", or "bf16" (allowed; used per model where its calibration passes).
    ``isa``: the bf16 instruction set that makes it fast ("amx_bf16" or "avx512_bf16"), None for fp32;
    calibration records are keyed by it, since the kernels (and so the rounding) differ between the two.
    ``reason``: one line for the worker's log saying why this path was chosen.
    """

    precision: Precision
    isa: str | None
    reason: str

    @property
    def space_to_batch(self) -> bool:
        """Whether MeshNet's bf16 twin runs its widely dilated steps on space-to-batch blocks here.

        Only on AMX: there oneDNN's bf16 convolutions slow down steeply with the dilation (30 channels on
        128³: dilation 1 0.34 s, 16 8.73 s), and blocks run them at dilation 1 to 4. With AVX512-BF16 alone
        (AMD EPYC, 2026-11-28, 30 channels on subject-a's 137x143x186 box) the bf16 kernels take 0.49-0.52 s
        at every dilation from 1 to 16, and the same step on blocks 0.86-0.99 s (the copies in and out), so
        the twin's forward took 5.51 s direct against 6.12 s on blocks.
        """
        return self.isa == "amx_bf16"


FP32 = CpuPath("fp32", None, "fp32 (default)")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags as Linux lists them (first processor's ``flags``); empty elsewhere."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def bf16_isa(flags: frozenset[str]) -> str | None:
    """The native bf16 instruction set among ``flags`` (AMX preferred), None when there is none."""
    if "amx_bf16" in flags and "amx_tile" in flags:
        return "amx_bf16"
    if "avx512_bf16" in flags:
        return "avx512_bf16"
    return None


def select_cpu_path(setting: str, flags: frozenset[str], device: str = "cpu") -> CpuPath:
    """Choose the path from the ``SEGSERVE_CPU_PRECISION`` setting and the CPU's flags.

    "fp32" forces fp32; "auto" allows bf16 when the CPU has native bf16 (:func:`bf16_isa`) and the
    device is the CPU (a CUDA worker keeps fp32 here: this choice is about CPU kernels).

    Raises:
        ValueError: an unknown setting.
    """
    if setting not in PRECISION_SETTINGS:
        raise ValueError(f"cpu precision must be one of {', '.join(PRECISION_SETTINGS)}, got {setting!r}")
    if setting == "fp32":
        return CpuPath("fp32", None, "fp32, forced by SEGSERVE_CPU_PRECISION=fp32")
    if device != "cpu":
        return CpuPath("fp32", None, f"fp32: device {device} is not the CPU")
    isa = bf16_isa(flags)
    if isa is None:
        return CpuPath("fp32", None, "fp32: the CPU has neither avx512_bf16 nor amx_bf16")
    return CpuPath("bf16", isa, f"bf16 allowed ({isa}), per model where its calibration passes")
