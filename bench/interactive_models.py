"""Seconds per prompt of the interactive model engines, against the framework's own way of running them.

    python -m bench.interactive_models                  # CPU, both engines
    python -m bench.interactive_models --engines deepedit --device cuda

deepedit       The Zoo's spleen_deepedit_annotation with seeded random weights (models/testing/zoo.py), its
               config unchanged (128^3), on the whole real spleen CT (../shared/data/ct/spleen). A reviewer's
               session of three clicks (two inside, one outside), segmented after each click:
                 engine        DeepEditEngine: prepare once, then segment(clicks so far) per click
                 monai-runner  MONAI's bundle runner (``monai.bundle.run``, in this process) on the file with
                               the clicks so far in the case dict, per click: the BASELINE
               Also: whether the two masks are identical after each click.
nninteractive  The tiny seeded model folder (models/testing/make_nninteractive.py, patch 64^3) on an
               80x80x26 crop of that CT, four prompts (click, background click, 2D box, painted slice),
               auto-zoom off:
                 engine        NNInteractiveEngine: prepare once, segment(prompts so far) per prompt
                 session       nnInteractive's session driven directly, one interaction per prompt: BASELINE
                 replay        the engine after an undo (prompt set not extending the last: reset + replay)
One run per side, no repeats: on a loaded or small machine, compare ratios, not seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SEGSERVE_SHARED_DIR", REPO.parent / "shared")).resolve()
CT = SHARED / "data" / "ct" / "spleen" / "sub-spleen2_ct.nii.gz"


def _timed(fn: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def bench_deepedit(device: str, tmp: Path) -> dict[str, Any]:
    import nibabel as nib

    from models.bundle.build import _bundle_on_path
    from models.interactive.deepedit import DeepEditEngine
    from models.interactive.prompts import Click
    from models.testing.zoo import config_file, seed_bundle

    bundle = seed_bundle(SHARED / "zoo" / "spleen_deepedit_annotation", tmp / "spleen_deepedit_annotation")
    image: Any = nib.load(str(CT))
    array = np.asarray(image.dataobj)
    shape = array.shape
    clicks = [
        Click((shape[0] // 2, shape[1] // 2, shape[2] // 2)),
        Click((shape[0] // 2 - 10, shape[1] // 2 + 10, shape[2] // 2 - 3)),
        Click((10, 10, shape[2] // 2), foreground=False),
    ]
    engine, load_s = _timed(lambda: DeepEditEngine.from_folder(bundle, device=device, trusted=True))
    prepared, prepare_s = _timed(lambda: engine.prepare(array, image.header.get_zooms()[:3], image.affine))
    rows = []
    for k in range(1, len(clicks) + 1):
        mask, engine_s = _timed(lambda k=k: engine.segment(prepared, clicks[:k]))
        out = tmp / f"monai{k}"
        data = [{"image": str(CT), **engine.clicks(clicks[:k])}]

        def runner(out: Path = out, data: list[dict[str, Any]] = data) -> None:
            from monai.bundle import run

            with _bundle_on_path(bundle):
                run(
                    "run",
                    config_file=str(config_file(bundle)),
                    meta_file=str(bundle / "configs" / "metadata.json"),
                    bundle_root=str(bundle),
                    output_dir=str(out),
                    device=device,
                    **{"dataset#data": data, "dataloader#num_workers": 0},
                )

        _, runner_s = _timed(runner)
        saved: Any = nib.load(str(next(out.rglob("*.nii.gz"))))
        reference = np.asarray(saved.dataobj).squeeze() == engine.label_value
        rows.append(
            {
                "clicks": k,
                "engine_s": round(engine_s, 2),
                "monai_runner_s": round(runner_s, 2),
                "ratio": round(engine_s / runner_s, 3),
                "identical": bool(np.array_equal(mask, reference)),
            }
        )
    return {
        "load_s": round(load_s, 2),
        "prepare_s": round(prepare_s, 2),
        "shape": list(shape),
        "per_click": rows,
    }


def bench_nninteractive(device: str, tmp: Path) -> dict[str, Any]:
    import nibabel as nib
    import torch

    from models.interactive.nninteractive import NNInteractiveEngine, _new_session, add_prompt, seeded_numpy
    from models.interactive.prompts import Box, Click, Prompt, SliceMask
    from models.testing.make_nninteractive import write_model_folder

    folder = write_model_folder(tmp / "nninteractive", seed=0)
    image: Any = nib.load(str(CT))
    array = np.asarray(image.dataobj[30:110, 40:120, 0:26], dtype=np.int16)
    painted = np.zeros(array.shape[:2], bool)
    painted[30:45, 30:50] = True
    prompts: list[Prompt] = [
        Click((40, 40, 13)),
        Click((60, 30, 13), foreground=False),
        Box((20, 25, 10), (50, 60, 10)),
        SliceMask(axis=2, index=15, mask=painted),
    ]
    engine, load_s = _timed(lambda: NNInteractiveEngine(folder, device, autozoom=False))
    prepared = engine.prepare(array, (0.79, 0.79, 5.0))
    session = _new_session(torch.device(device), autozoom=False)
    session.initialize_from_loaded_artifacts(engine.artifacts)
    session.set_image(array[None], {})
    target = np.zeros(array.shape, np.uint8)
    session.set_target_buffer(target)
    rows = []
    for k, prompt in enumerate(prompts):
        mask, engine_s = _timed(lambda k=k: engine.segment(prepared, prompts[: k + 1]))

        def direct(k: int = k, prompt: Prompt = prompt) -> None:
            with seeded_numpy(k):
                add_prompt(session, prompt, array.shape)

        _, session_s = _timed(direct)
        rows.append(
            {
                "prompt": type(prompt).__name__,
                "engine_s": round(engine_s, 2),
                "session_s": round(session_s, 2),
                "ratio": round(engine_s / session_s, 3),
                "identical": bool(np.array_equal(mask, target > 0)),
            }
        )
    _, replay_s = _timed(lambda: engine.segment(prepared, prompts[:3]))
    return {"load_s": round(load_s, 2), "per_prompt": rows, "replay_3_prompts_s": round(replay_s, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", default="deepedit,nninteractive")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    benches = {"deepedit": bench_deepedit, "nninteractive": bench_nninteractive}
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-interactive-") as tmp:
        for name in args.engines.split(","):
            results[name] = benches[name](args.device, Path(tmp) / name)
            print(json.dumps({name: results[name]}, indent=1), flush=True)


if __name__ == "__main__":
    main()
