"""The ``segserve models pull totalseg-*`` command body: pull, validate (loads torch), report."""

from __future__ import annotations

import sys
import urllib.error
from pathlib import Path

from models.installed import InstallError
from models.totalseg import pull, tasks


def pull_command(card_id: str, models_dir: Path, *, base: str | None = None) -> int:
    """Pull ``card_id`` into ``models_dir``; 0 on success, 2 with a message on stderr otherwise."""
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
