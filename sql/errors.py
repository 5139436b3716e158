"""The one base class of errors a user caused and may read.

`UserError` marks an exception whose message names what in the request was
wrong and is safe to show (no internal SQL, paths or other tenants). The API
turns these — and only these — into 4xx answers with their text; anything else
is a bug or an outage and becomes a logged 500 with no detail. It subclasses
`ValueError` so the CLI's existing `except ValueError` paths keep working.

It lives in `sql/`, the lowest floor, so that sql, engine and tiering can all
derive from it without importing upward.
"""

from __future__ import annotations


class UserError(ValueError):
    """An error in the user's request, with a message safe to show them."""
