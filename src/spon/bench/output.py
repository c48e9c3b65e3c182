"""What every benchmark does with its result: JSON printed, and written atomically where a folder is given."""

from __future__ import annotations

import json

from spon.io.atomic import ensure_writable_dir, write_text

__all__ = ["write_json"]


def write_json(folder: str | None, name: str, obj: dict) -> str:
    """Write folder/name (atomically) when folder is given; return the JSON text to print."""
    text = json.dumps(obj, indent=2, default=str)
    if folder:
        write_text(ensure_writable_dir(folder) / name, text)
    return text
