"""Where `GET /v1/cdrs/{id}/recording` sends the client: a checked URL, never raw data.

The rule lives in sql/recordings.py (pure, shared with whatever else wants to
check a recording URL). Here it meets the service's configuration: the
allow-list (`ServiceConfig.recordings`) and, for `s3://` recordings, a SigV4
presigned URL made with the archive's S3 settings (endpoint, region,
credentials, `--presign-expiry`) — and never for an object inside the archive,
which holds every account's calls.
"""

from __future__ import annotations

from fastapi import Request

from cdrhouse.api.deps import service as service_of
from cdrhouse.api.errors import Problem
from cdrhouse.sql.recordings import RecordingRefused
from cdrhouse.tiering.store import ArchiveError, S3Store


def _presigner(request: Request) -> S3Store:
    """The archive's S3 client when the archive is on S3, else one made (once per app)
    from the same settings: recordings may live on S3 with a local archive."""
    service = service_of(request)
    store = service.warm.store
    if isinstance(store, S3Store):
        return store
    made = getattr(request.app.state, "recording_presigner", None)
    if made is None:
        cfg = service.config.archive
        made = S3Store("recordings", "", endpoint=cfg.s3_endpoint, region=cfg.region,
                       presign_expiry=cfg.presign_expiry)
        request.app.state.recording_presigner = made
    return made


def _inside_archive(store: object, bucket: str, key: str) -> bool:
    if not isinstance(store, S3Store) or bucket != store.bucket:
        return False
    return not store.prefix or key == store.prefix or key.startswith(store.prefix + "/")


def recording_location(request: Request, call_id: str, url: str) -> str:
    """The URL to redirect to for the recording `url` of `call_id`, or a problem."""
    service = service_of(request)
    try:
        target = service.config.recordings.check(url)
    except RecordingRefused as exc:
        raise Problem("recording-refused", f"the recording of call {call_id!r} is not "
                                           f"served: {exc}") from None
    if not target.is_s3:
        return target.url
    if _inside_archive(service.warm.store, target.bucket, target.key):
        raise Problem("recording-refused", f"the recording of call {call_id!r} is not served: "
                                           "it points into the CDR archive")
    try:
        return _presigner(request).presign_object(target.bucket, target.key)
    except ArchiveError as exc:
        raise Problem("unavailable", f"cannot sign the recording's S3 URL: {exc}") from None
