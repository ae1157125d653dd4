"""Placing checked STOW-RS instances into their series' open collection.

Per (study, series) of the request: find or create the open collection (segserve.intake), restart its
quiet period, then hard-link each instance into `<incoming_dir>/<id>/image/<name>`:

- `name` is derived from the SOP Instance UID as stored, and os.link never overwrites, so an instance sent
  twice to an open series is kept once (the second copy is reported as stored all the same: idempotent);
- a sweeper closes a series by renaming its directory away first, so a link that finds the directory
  gone means the series was closed between our two steps: the remaining instances go to a new
  collection of that series (which later becomes a job of its own).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from segserve.config import Settings
from segserve.db import new_session
from segserve.dicom.deid_store import save_uid_pairs
from segserve.intake import collection_dir, open_collection, touch
from service.dicomweb.instances import OUT_OF_RESOURCES, PROCESSING_FAILURE, Received, Rejected


@dataclass
class Placement:
    stored: list[Received] = field(default_factory=list)
    failed: list[Rejected] = field(default_factory=list)
    series_ids: list[str] = field(default_factory=list)  # the collections the instances went to


def instance_file_name(stored_sop_instance_uid: str) -> str:
    """A fixed-length file name per SOP Instance UID (UIDs themselves are not used as paths)."""
    return hashlib.sha256(stored_sop_instance_uid.encode()).hexdigest()[:40] + ".dcm"


def place(settings: Settings, received: list[Received], model_id: str, key_id: str) -> Placement:
    """Link every instance of `received` into its series' open collection; see the module docstring."""
    result = Placement()
    groups: dict[tuple[str, str], list[Received]] = {}
    for item in received:
        groups.setdefault((item.facts.study_uid, item.facts.series_uid), []).append(item)
    url = settings.resolved_database_url
    with new_session(url) as session:
        deid = [item.deid for item in received if item.deid is not None]
        if deid:  # the tie-back to the source study is committed before any file is placed
            save_uid_pairs(session, deid)
        for items in groups.values():
            pending = list(items)
            for _attempt in range(3):
                if not pending:
                    break
                row = open_collection(session, pending[0].facts, model_id, key_id, settings.incoming_dir)
                if not touch(session, row.id):
                    continue  # closed since we read it: the next round opens a new collection
                pending, added = _link_all(pending, collection_dir(settings.incoming_dir, row.id), result)
                touch(session, row.id, added)
                if row.id not in result.series_ids:
                    result.series_ids.append(row.id)
            for item in pending:
                result.failed.append(
                    Rejected(
                        item.part,
                        PROCESSING_FAILURE,
                        f"part {item.part} could not be stored: its series kept closing while it arrived",
                        item.sop_class_uid,
                        item.sop_instance_uid,
                    )
                )
    return result


def _link_all(items: list[Received], directory: Path, result: Placement) -> tuple[list[Received], int]:
    """Link `items` into `directory`; returns (the items left when the directory vanished, links made)."""
    added = 0
    for n, item in enumerate(items):
        try:
            os.link(item.path, directory / instance_file_name(item.stored_sop_instance_uid))
            added += 1
        except FileExistsError:
            pass  # the same instance again: stored once
        except FileNotFoundError:
            return items[n:], added  # a sweeper took the collection
        except OSError as exc:  # disk full, quota: this instance fails, the request still gets its answer
            result.failed.append(
                Rejected(
                    item.part,
                    OUT_OF_RESOURCES,
                    f"part {item.part} could not be stored ({exc.strerror or type(exc).__name__})",
                    item.sop_class_uid,
                    item.sop_instance_uid,
                )
            )
            continue
        result.stored.append(item)
    return [], added
