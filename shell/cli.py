"""The `segserve` command line: run the service, manage keys and models."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from segserve.config import Settings, get_settings
from segserve.db import ApiKey, Role, init_db, session_scope
from segserve.logging import setup_logging
from shell.models_cmd import cmd_models, lesion_labels


def _cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    from shell.up import run_up

    return run_up(
        settings,
        concurrency=args.concurrency,
        queue=args.queue,
        interactive_concurrency=args.interactive_concurrency,
    )


def _cmd_api(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    uvicorn.run(
        "service.main:create_app",
        factory=True,
        host=args.host or settings.host,
        port=args.port or settings.port,
        log_level=settings.log_level.lower(),
        # SIGTERM: stop accepting, let uploads in flight finish for this long (see service/shutdown.py)
        timeout_graceful_shutdown=settings.shutdown_grace_s,
    )
    return 0


def _cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from workers import interactive, tasks  # noqa: F401  (registers the tasks and signal handlers)
    from workers.celery_app import INTERACTIVE_QUEUE, app, configure

    interactive.ROLE["interactive"] = args.queue == INTERACTIVE_QUEUE

    configure(app, settings)
    init_db(settings.resolved_database_url)
    argv = [
        "worker",
        "--queues",
        args.queue,
        "--concurrency",
        str(args.concurrency),
        "--pool",
        "prefork",
        "--hostname",
        f"{args.queue}-{os.getpid()}@%h",
        "--loglevel",
        settings.log_level,
        "--without-mingle",
        "--without-gossip",
    ]
    app.worker_main(argv)
    return 0


def _cmd_keys(args: argparse.Namespace, settings: Settings) -> int:
    from sqlalchemy import select

    from segserve.security import create_key, revoke_key

    init_db(settings.resolved_database_url)
    with session_scope(settings.resolved_database_url) as session:
        if args.keys_cmd == "create":
            new = create_key(session, args.name, Role(args.role))
            session.flush()
            print(json.dumps({"id": new.id, "name": new.name, "role": new.role.value, "key": new.secret}))
        elif args.keys_cmd == "list":
            for key in session.scalars(select(ApiKey).order_by(ApiKey.created_at)):
                state = "revoked" if key.revoked_at else "active"
                print(f"{key.id}\t{key.role}\t{state}\t{key.name}")
        elif args.keys_cmd == "revoke" and not revoke_key(session, args.key_id):
            print(f"no active key with id {args.key_id}", file=sys.stderr)
            return 1
    return 0


def _cmd_evaluate(args: argparse.Namespace, settings: Settings) -> int:
    from evaluation.dataset import DatasetError
    from models.installed import InstallError
    from shell.evaluate import evaluate_dataset, evaluate_folders

    try:
        if args.dataset:
            if not args.model:
                print("--dataset needs --model", file=sys.stderr)
                return 2
            api = args.api or f"http://{settings.host}:{settings.port}"
            key = args.key or os.environ.get("SEGSERVE_API_KEY", "")
            if not key:
                print("give --key or set SEGSERVE_API_KEY (a researcher or admin key)", file=sys.stderr)
                return 2
            return evaluate_dataset(
                settings, Path(args.dataset), args.model, Path(args.out), args.label_map, api, key
            )
        if not (args.predictions and args.references):
            print("give --predictions and --references, or --dataset and --model", file=sys.stderr)
            return 2
        return evaluate_folders(
            Path(args.predictions),
            Path(args.references),
            Path(args.out),
            args.labels,
            args.tolerance_mm,
            lesion_labels(args.lesion_labels),
        )
    except (DatasetError, InstallError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _cmd_db(_args: argparse.Namespace, settings: Settings) -> int:
    init_db(settings.resolved_database_url)
    print("database ready")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segserve", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser(
        "up", help="run the API, a worker and (without SEGSERVE_REDIS_URL) an embedded broker"
    )
    up.add_argument("--concurrency", type=int, default=1, help="worker processes (each loads models once)")
    up.add_argument("--queue", default="cpu", choices=["cpu", "gpu"])
    up.add_argument(
        "--interactive-concurrency",
        type=int,
        default=1,
        help="processes of the interactive worker (interaction sessions' clicks; 0: none)",
    )
    up.set_defaults(func=_cmd_up)

    api = sub.add_parser("api", help="run the API only (uvicorn)")
    api.add_argument("--host")
    api.add_argument("--port", type=int)
    api.set_defaults(func=_cmd_api)

    worker = sub.add_parser("worker", help="run a Celery worker")
    worker.add_argument(
        "--queue",
        default="cpu",
        choices=["cpu", "gpu", "interactive"],
        help="interactive: interaction sessions' clicks only (their own worker, so none waits behind a job)",
    )
    worker.add_argument("--concurrency", type=int, default=1)
    worker.set_defaults(func=_cmd_worker)

    keys = sub.add_parser("keys", help="manage API keys")
    keys_sub = keys.add_subparsers(dest="keys_cmd", required=True)
    create = keys_sub.add_parser("create", help="create a key and print it (once)")
    create.add_argument("--name", required=True)
    create.add_argument("--role", required=True, choices=[r.value for r in Role])
    keys_sub.add_parser("list", help="list keys (never their secrets)")
    revoke = keys_sub.add_parser("revoke", help="revoke a key")
    revoke.add_argument("key_id")
    keys.set_defaults(func=_cmd_keys)

    models = sub.add_parser("models", help="manage model weights")
    models_sub = models.add_subparsers(dest="models_cmd", required=True)
    models_sub.add_parser("list", help="list catalog models and whether their weights are present")
    models_sub.add_parser(
        "verify", help="check every weight file's sha256; exit 1 when any model is unavailable"
    )
    install = models_sub.add_parser(
        "install", help="copy weight files from a folder into the models directory"
    )
    install.add_argument("path")
    install.add_argument(
        "--trust-code",
        action="store_true",
        help="allow a bundle that runs code of its own ($ expressions, scripts/, non-MONAI components); "
        "admins only: the code runs in every worker",
    )
    install.add_argument("--installed-by", default="", help="who installs (default: $USER); audit log")
    install.add_argument(
        "--folds", help="nnU-Net models: folds to install, e.g. 0,1 or all (default: every trained fold)"
    )
    install.add_argument(
        "--lesion-labels",
        help="label values that are lesions (tumour, metastasis...), e.g. 2,3: their jobs get lesion "
        "instances and lesion-wise metrics",
    )
    pull = models_sub.add_parser(
        "pull",
        help="fetch a model from its public source, check its hashes, install it: a MONAI Model Zoo bundle "
        "(NAME[@VERSION]) or a TotalSegmentator task of the catalog (totalseg-*)",
    )
    pull.add_argument("ref", metavar="NAME[@VERSION]")
    pull.add_argument("--source", default="github", choices=["github", "monaihosting", "ngc"])
    pull.add_argument(
        "--base-url",
        help="a stand-in host for the source (a mirror, a local server); TotalSegmentator tasks: the "
        "releases base URL (default $SEGSERVE_TOTALSEG_BASE_URL or the public one)",
    )
    pull.add_argument(
        "--repo", default="Project-MONAI/model-zoo/hosting_storage_v1", help="github owner/name/tag"
    )
    pull.add_argument(
        "--index-url", help="the Zoo index model_info.json (default: the Zoo's, or BASE/model_info.json)"
    )
    pull.add_argument(
        "--trust-code",
        action="store_true",
        help="allow a bundle that runs code (as for install); admins only",
    )
    pull.add_argument("--installed-by", default="", help="who installs (default: $USER); audit log")
    calibrate = models_sub.add_parser(
        "calibrate",
        help="installed model: compare its labels in fp32 and in bf16 (CPU) on your real scans and record "
        "whether workers may run it in bf16 (>= 99.9 %% equal voxels on every scan)",
    )
    calibrate.add_argument("model", help="an installed model's id (a MONAI bundle or an nnU-Net model)")
    calibrate.add_argument(
        "--scan",
        action="append",
        required=True,
        help="a scan (NIfTI, NRRD, MGZ file or a DICOM series folder); repeat for more scans; for a "
        "multi-channel model, its channels' files joined by commas in the model's order",
    )
    calibrate.add_argument("--dry-run", action="store_true", help="measure and print, record nothing")
    models.set_defaults(func=cmd_models)

    ev = sub.add_parser("evaluate", help="batch evaluation: folders here, or a dataset through a model")
    ev.add_argument("--predictions", help="folder of predicted label volumes (<case>.nii.gz)")
    ev.add_argument("--references", help="folder of reference label volumes (<case>.nii.gz)")
    ev.add_argument(
        "--labels", help="JSON file of label value -> name (default: dataset.json by the references)"
    )
    ev.add_argument("--dataset", help="nnU-Net v2 / Decathlon dataset folder under SEGSERVE_DATASETS_DIR")
    ev.add_argument("--model", help="catalog model to run over the dataset")
    ev.add_argument("--label-map", help='JSON {"model value": dataset value}, e.g. \'{"1": 1, "7": 2}\'')
    ev.add_argument("--tolerance-mm", type=float, help="surface Dice tolerance in mm (folders mode)")
    ev.add_argument(
        "--lesion-labels",
        help="label values that are lesions, e.g. 2: adds lesion-wise results, detection by size and missed "
        "lesions (folders mode)",
    )
    ev.add_argument("--api", help="service URL for --dataset (default http://SEGSERVE_HOST:SEGSERVE_PORT)")
    ev.add_argument("--key", help="API key for --dataset (default $SEGSERVE_API_KEY)")
    ev.add_argument("--out", required=True, help="folder for summary.json, cases.csv, report.html")
    ev.set_defaults(func=_cmd_evaluate)

    db = sub.add_parser("db", help="create the database tables")
    db.set_defaults(func=_cmd_db)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = get_settings()
    setup_logging(settings.log_level)
    return int(args.func(args, settings))


if __name__ == "__main__":
    sys.exit(main())
