"""The web viewer: the page operators, customers and carriers use in a browser.

`mount(app)` adds its routes to the service's FastAPI app. The parts:

- `session`  — sign-in (user + password, or an API key), server-side sessions in
  the store, the cookie, CSRF checks, failed-sign-in limits;
- `state`    — the viewer's state as URL parameters, and its translation to the
  same `ViewParams` + builder rules the /v1 API takes;
- `routes`   — the page, its downloads, recordings, preferences and saved views,
  all through `api.deps` (the API's own guarded calls);
- `users`    — /v1/users: operators manage their tenant's portal users;
- `sqlpage`  — the SQL page (`/sql`): an editor whose script runs user SQL on /v1;
- `tools`    — the Jobs panel and the Balances & rate cards page (shells whose
  scripts use /v1; the CDR page's Recalc dialog is `templates/_recalc.html`);
- `render`, `assets`, `recording` — display values, hashed static files, the
  recording proxy; `templates/` and `static/` are shipped as package data.
"""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import FastAPI


def mount(app: FastAPI, api_dependencies: Sequence = ()) -> None:
    """Add the page's routes, and /v1/users with the other /v1 routers' dependencies."""
    from cdrhouse.api.web import routes, sqlpage, tools, users

    app.include_router(users.router, dependencies=list(api_dependencies))
    app.include_router(routes.router)
    app.include_router(sqlpage.router)
    app.include_router(tools.router)
