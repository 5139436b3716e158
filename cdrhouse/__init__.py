"""cdrhouse: an analytical store for call detail records on ClickHouse.

The code lives in four top-level folders of the repository (`api/`, `sql/`,
`engine/`, `tiering/`), the project's declared layout; they are installed as
subpackages of this one (`cdrhouse.api`, …) so that cdrhouse never puts generic
names such as `api` or `sql` into a user's site-packages. `pyproject.toml` maps
the folders (setuptools `package-dir`).
"""
