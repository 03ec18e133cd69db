"""`visinspect images cleanup`: the image store's cleanup, for a cron job or a Kubernetes CronJob.

Light on purpose (no model, no database): it needs the store's directory and its two bounds."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from visinspect.config import Settings
from visinspect.storage.image_store import open_image_store


def cleanup(settings: Settings, _args: argparse.Namespace | None = None) -> int:
    store = open_image_store(settings)
    if store is None:
        print("visinspect: IMAGE_STORE_DIR is not set: there is no store to clean", file=sys.stderr)
        return 2
    report = store.cleanup()
    print(json.dumps({"store": str(store.root), **asdict(report)}))
    return 0
