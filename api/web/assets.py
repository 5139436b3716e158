"""Static files of the page, served under content-hashed names.

`asset_url("app.js")` is `/static/app.<sha256 prefix>.js`: a new release
changes the name, so browsers may cache each file for a year
(`immutable`) and never run a stale script. Only files shipped in
`api/web/static/` are served, and only under their current hash.
"""

from __future__ import annotations

import hashlib
import mimetypes
from functools import lru_cache
from pathlib import Path

from starlette.responses import Response

STATIC_DIR = Path(__file__).parent / "static"


@lru_cache(maxsize=None)
def _table() -> dict[str, tuple[str, Path]]:
    """hashed name -> (plain name, path), for every shipped file."""
    out = {}
    for path in sorted(STATIC_DIR.iterdir()):
        if not path.is_file() or path.name.startswith("."):
            continue
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        stem, dot, ext = path.name.rpartition(".")
        out[f"{stem}.{digest}.{ext}" if dot else f"{path.name}.{digest}"] = (path.name, path)
    return out


@lru_cache(maxsize=None)
def asset_url(name: str) -> str:
    for hashed, (plain, _) in _table().items():
        if plain == name:
            return f"/static/{hashed}"
    raise KeyError(f"no static file {name!r} in {STATIC_DIR}")


def serve_asset(hashed: str) -> Response:
    found = _table().get(hashed)
    if found is None:
        return Response("not found", status_code=404, media_type="text/plain")
    plain, path = found
    media = mimetypes.guess_type(plain)[0] or "application/octet-stream"
    if media.startswith("text/") or media == "application/javascript":
        media += "; charset=utf-8"
    return Response(path.read_bytes(), media_type=media, headers={
        "Cache-Control": "public, max-age=31536000, immutable",
        "X-Content-Type-Options": "nosniff"})
