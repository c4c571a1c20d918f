"""On-disk cache of LLM responses keyed by the full request, so a rerun reproduces a run without the LLM.

The key is the SHA-256 of the canonical JSON of everything that determines the
answer: model, messages, response format and sampling settings (not the URL or
the API key, so the same model served elsewhere hits the same entries).
Entries are written atomically (temporary file + rename): a killed run leaves
no half-written entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path


def request_key(request: dict) -> str:
    return hashlib.sha256(json.dumps(request, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class ResponseCache:
    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def get(self, request: dict) -> dict | None:
        path = self._path(request_key(request))
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError, OSError):
            return None
        return entry.get("response") if isinstance(entry, dict) else None

    def put(self, request: dict, response: dict) -> None:
        path = self._path(request_key(request))
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"request": request, "response": response}, f, ensure_ascii=False)
        os.replace(tmp, path)
