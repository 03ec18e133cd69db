"""`visinspect keys new NAME`: a random API key, and the API_KEYS entry that holds its digest only."""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import secrets
import sys

from visinspect.config import API_KEY_NAME, API_KEY_SCOPES, Settings

_NAME = re.compile(rf"^{API_KEY_NAME}$")


def new(settings: Settings, args: argparse.Namespace) -> int:
    """Print a new key (256 random bits) once, and the entry for API_KEYS: the key's name, its
    scopes and the SHA-256 of the key, so that the environment never holds the key itself. Says
    so when API_KEYS already names a key so (two keys of one name share its reviews and images)."""
    if not _NAME.match(args.name):
        raise SystemExit(f"visinspect: {args.name!r} is not a key name ({API_KEY_NAME})")
    scopes = sorted(set(args.scope))  # required: a key that may do everything is asked for
    unknown = set(scopes) - API_KEY_SCOPES
    if unknown:
        raise SystemExit(
            f"visinspect: unknown scopes {sorted(unknown)}; known: {sorted(API_KEY_SCOPES)}"
        )
    taken = [
        entry
        for entry in (secret.get_secret_value() for secret in settings.api_keys)
        if entry.startswith((f"{args.name}:", f"{args.name}@"))
    ]
    if taken:
        print(
            f"visinspect: API_KEYS already has a key named {args.name!r}: replace its entry with "
            "this one, or choose another name",
            file=sys.stderr,
        )
    key = secrets.token_urlsafe(32)
    digest = hashlib.sha256(key.encode()).hexdigest()
    entry = f"{args.name}@{'+'.join(scopes)}:sha256:{digest}"
    if args.json:
        print(json.dumps({"key": key, "api_keys_entry": entry}))
    else:
        print(f"key (give it to the client; it is not stored anywhere): {key}")
        print(f"API_KEYS entry (add it, comma-separated): {entry}")
    return 0
