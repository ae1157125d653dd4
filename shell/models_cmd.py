"""`segserve models`: list, verify, install and pull models (MONAI bundles, nnU-Net folders, TotalSegmentator
tasks), each install recorded in the audit log."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from segserve.config import Settings
from segserve.db import init_db, session_scope


def _audit_installs(settings: Settings, models_dir: Path, installed: list[str], installed_by: str) -> None:
    """One audit row per installed model folder: who installed it, the sha256 of its manifest (which pins
    every file), and whether its code was trusted."""
    from models.card import file_sha256
    from models.installed import MANIFEST, read_manifest
    from segserve.audit import record

    folders = sorted({"/".join(p.split("/")[:2]) for p in installed if p.count("/") >= 2})
    rows = []
    for folder in folders:
        manifest_path = models_dir / folder / MANIFEST
        if not manifest_path.is_file():
            continue
        manifest = read_manifest(manifest_path.parent)
        detail = {
            "installed_by": installed_by,
            "manifest_sha256": file_sha256(manifest_path),
            "executes_code": bool(manifest.get("executes_code", False)),
            "trusted_code": bool(manifest.get("trusted_code", False)),
        }
        rows.append((folder.split("/")[1], detail))
    if not rows:
        return
    if settings.resolved_database_url.startswith("sqlite:///"):
        settings.resolved_data_dir.mkdir(parents=True, exist_ok=True)
    init_db(settings.resolved_database_url)
    with session_scope(settings.resolved_database_url) as session:
        for model_id, detail in rows:
            record(
                session,
                key_id=None,
                action="model.install",
                resource_type="model",
                resource_id=model_id,
                client_address="cli",
                detail=detail,
            )


def _folds(text: str | None) -> tuple[int | str, ...] | None:
    """``--folds 0,1`` -> (0, 1); "all" stays "all" (nnU-Net's fold_all); None when not given."""
    from models.installed import InstallError

    if not text:
        return None
    folds: list[int | str] = []
    for part in (p.strip() for p in text.split(",")):
        if part != "all" and not part.isdigit():
            raise InstallError(f"--folds takes fold numbers or 'all', separated by commas; got {part!r}")
        folds.append(part if part == "all" else int(part))
    return tuple(folds)


def lesion_labels(text: str | None) -> tuple[int, ...]:
    """``--lesion-labels 2,3`` -> (2, 3); () when not given."""
    from models.installed import InstallError

    if not text:
        return ()
    parts = [p.strip() for p in text.split(",")]
    bad = [p for p in parts if not p.isdigit() or int(p) == 0]
    if bad:
        raise InstallError(f"--lesion-labels takes label values > 0 separated by commas; got {bad[0]!r}")
    return tuple(int(p) for p in parts)


def cmd_models(args: argparse.Namespace, settings: Settings) -> int:
    from models.catalog import Catalog
    from models.formats import InstallOptions
    from models.install import install_models
    from models.installed import InstallError

    models_dir = settings.resolved_models_dir
    if args.models_cmd == "calibrate":
        return _models_calibrate(args, settings, models_dir)
    if args.models_cmd == "pull":
        code = _models_pull(args, settings, models_dir)
        if code:
            return code
    if args.models_cmd == "install":
        from models.formats import InstallOptions

        installed_by = args.installed_by or os.environ.get("USER") or "unknown"
        try:
            options = InstallOptions(
                trust_code=args.trust_code,
                installed_by=installed_by,
                folds=_folds(args.folds),
                lesion_labels=lesion_labels(args.lesion_labels),
            )
            installed = install_models(Path(args.path), models_dir, options=options)
        except (InstallError, FileNotFoundError, NotADirectoryError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        for path in installed:
            print(f"installed {path}")
        print(f"{len(installed)} file(s) installed into {models_dir}")
        _audit_installs(settings, models_dir, installed, installed_by)
    catalog = Catalog(models_dir)
    failures = 0
    for status in catalog.statuses():
        mark = "ok" if status.available else f"UNAVAILABLE: {status.reason}"
        print(f"{status.card.id}\t{status.card.version}\t{mark}")
        failures += 0 if status.available else 1
    return 1 if args.models_cmd == "verify" and failures else 0


def pull_totalseg(card_id: str, models_dir: Path, *, base: str | None = None) -> int:
    """Pull the TotalSegmentator task ``card_id`` into ``models_dir`` (models/totalseg/pull.py), validating
    each part model (loads torch); 0 on success, 2 with a message on stderr otherwise."""
    import urllib.error

    from models.installed import InstallError
    from models.totalseg import pull, tasks
    from models.totalseg.predictor import validate_staged

    try:
        card = tasks.task_card(card_id)
        print(f"{card.id} {card.version}: {card.licence}")
        home = pull.pull(card_id, models_dir, base=base, validate=validate_staged, say=print)
    except KeyError as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 2
    except (InstallError, OSError, urllib.error.URLError, ValueError, RuntimeError) as exc:
        print(f"error: pulling {card_id} failed: {exc}", file=sys.stderr)
        return 2
    print(f"installed {card_id} into {home}")
    return 0


def _models_pull(args: argparse.Namespace, settings: Settings, models_dir: Path) -> int:
    """`segserve models pull NAME[@VERSION]`: TotalSegmentator tasks (``totalseg-*``, models/totalseg/pull.py)
    or MONAI Model Zoo bundles (models/bundle/pull.py); 0 when installed, 2 on error."""
    if args.ref.startswith("totalseg-"):
        return pull_totalseg(args.ref, models_dir, base=args.base_url)
    from models.bundle.pull import PullError, ZooSource, pull_bundle
    from models.formats import InstallOptions
    from models.installed import InstallError

    try:
        source = ZooSource(args.source, args.base_url, args.repo, args.index_url)
        installed_by = args.installed_by or os.environ.get("USER") or "unknown"
        options = InstallOptions(trust_code=args.trust_code, installed_by=installed_by)
        pulled = pull_bundle(args.ref, models_dir, source, options)
    except (PullError, InstallError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in pulled.installed:
        print(f"installed {path}")
    for rel in pulled.unverified:
        print(f"warning: {rel} has no hash in large_files; not verified", file=sys.stderr)
    print(f"pulled {pulled.name} {pulled.version} ({len(pulled.verified)} large file(s) hash-checked)")
    _audit_installs(settings, models_dir, pulled.installed, installed_by)
    return 0


def _models_calibrate(args: argparse.Namespace, settings: Settings, models_dir: Path) -> int:
    """`segserve models calibrate ID --scan PATH ...`: fp32 against bf16 labels of an installed model on
    the given scans (models.calibration); records the verdict beside the models unless --dry-run. 0 when
    measured (whatever the verdict), 1 on a CPU without native bf16, 2 on a bad model or scan."""
    from models.calibration import installed_records, measure_installed, record_key, verdict, write_record
    from models.catalog import Catalog
    from models.cpu import cpu_flags, select_cpu_path
    from models.formats import format_named
    from models.totalseg.tasks import WEIGHTS_FORMAT as TOTALSEG
    from segserve.imaging.errors import ImageError
    from segserve.scans.readers import read_image

    path = select_cpu_path("auto", cpu_flags())
    if path.isa is None:
        print(f"nothing to calibrate on this CPU: {path.reason}", file=sys.stderr)
        return 1
    try:
        card = Catalog(models_dir).card(args.model)
    except KeyError:
        print(f"error: no model {args.model!r} in {models_dir}", file=sys.stderr)
        return 2
    fmt = format_named(str(card.params.get("weights_format", "")))
    if fmt is None or fmt.name == TOTALSEG:
        print(f"error: {card.id} is not an installed bundle or nnU-Net model", file=sys.stderr)
        return 2
    try:
        scans = {
            f"scan {n}": [read_image(_scan_paths(Path(part))) for part in text.split(",")]
            for n, text in enumerate(args.scan, start=1)
        }
    except (ImageError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    predictor = fmt.predictor_class().load(card, models_dir)
    results = measure_installed(predictor, scans)
    for name, row in results.items():
        print(
            f"{name}: {100 * row['agreement_network']:.3f} % of {row['voxels_network']} voxels equal; "
            f"fp32 {row['seconds_fp32']:.1f} s, bf16 {row['seconds_bf16']:.1f} s"
        )
    print(f"{card.id} on {path.isa}: {verdict(results)}")
    if not args.dry_run:
        write_record(record_key(card, path.isa), results, {}, installed_records(models_dir))
        print(f"recorded in {installed_records(models_dir)}; workers read it when they load the model")
    return 0


def _scan_paths(path: Path) -> list[Path]:
    """A scan file, or the files of a DICOM series folder."""
    return sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
