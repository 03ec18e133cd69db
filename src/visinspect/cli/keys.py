"""`visinspect keys new NAME`: a random API key, and the API_KEYS entry that holds its digest only."""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import secrets

from visinspect.config import API_KEY_NAME, API_KEY_SCOPES, Settings

_NAME = re.compile(rf"^{API_KEY_NAME}$")


def new(_settings: Settings, args: argparse.Namespace) -> int:
    """Print a new key (256 random bits) once, and the entry for API_KEYS: the key's name, its
    scopes and the SHA-256 of the key, so that the environment never holds the key itself."""
    if not _NAME.match(args.name):
        raise SystemExit(f"visinspect: {args.name!r} is not a key name ({API_KEY_NAME})")
    scopes = sorted(set(args.scope or []))
    unknown = set(scopes) - API_KEY_SCOPES
    if unknown:
        raise SystemExit(
            f"visinspect: unknown scopes {sorted(unknown)}; known: {sorted(API_KEY_SCOPES)}"
        )
    key = secrets.token_urlsafe(32)
    digest = hashlib.sha256(key.encode()).hexdigest()
    name = f"{args.name}@{'+'.join(scopes)}" if scopes else args.name
    entry = f"{name}:sha256:{digest}"
    if args.json:
        print(json.dumps({"key": key, "api_keys_entry": entry}))
    else:
        print(f"key (give it to the client; it is not stored anywhere): {key}")
        print(f"API_KEYS entry (add it, comma-separated): {entry}")
    return 0
