"""The wheel: one top-level package, every subpackage, the schema files; installable.

pyproject.toml lists the packages explicitly (the folders stay at the repository's
top level and are mapped under `cdrhouse.` by `package-dir`), so a new folder with an
`__init__.py` that is not added there would silently be missing from a real install
while every test of the editable checkout still passes. This builds the wheel from a
copy of the source and compares it with the folders on disk, then installs it
non-editable into a scratch venv and runs it from outside the repository.
"""

from __future__ import annotations

import shutil
import site as site_module
import subprocess
import sys
import sysconfig
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# the repository folders that install as cdrhouse.<name> (cdrhouse/ itself is the root),
# read from pyproject's package-dir so that a new top-level folder is checked too
MAPPED = tuple(folder for name, folder in tomllib.loads(
    (REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].items()
    if name != "cdrhouse")


def _expected_packages() -> set[str]:
    """Every folder with an __init__.py under the mapped folders, as an import name."""
    found = {"cdrhouse"}
    for top in MAPPED:
        for init in (REPO / top).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO)
            if "__pycache__" in rel.parts:
                continue
            found.add(".".join(("cdrhouse", *rel.parts)))
    return found


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Build the wheel from a copy of the tree (an in-tree build would write build/ here)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "venv", "build", "*.egg-info", "__pycache__", ".pytest_cache",
        "results", "cdrhouse-data"))
    out = tmp / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out),
                    str(src)], check=True, capture_output=True, text=True)
    (whl,) = out.glob("cdrhouse-*.whl")
    return whl


def test_wheel_holds_only_cdrhouse_with_every_subpackage_and_the_schema(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/", 1)[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"cdrhouse"}

    packages = {n.rsplit("/", 1)[0].replace("/", ".") for n in names
                if n.endswith("/__init__.py")}
    expected = _expected_packages()
    assert expected - packages == set(), \
        "folders with __init__.py missing from the wheel: add them to `packages` in pyproject.toml"
    assert packages == expected

    schema = sorted(p.name for p in (REPO / "sql" / "schema").glob("*.sql"))
    assert schema, "no schema files found in sql/schema"
    assert sorted(n.rsplit("/", 1)[1] for n in names
                  if n.startswith("cdrhouse/sql/schema/") and n.endswith(".sql")) == schema
    # every module of the tree is in the wheel (a file outside a package would be dropped)
    for top in MAPPED:
        for py in (REPO / top).rglob("*.py"):
            if "__pycache__" not in py.parts:
                assert f"cdrhouse/{py.relative_to(REPO).as_posix()}" in names


def test_wheel_installs_and_runs_outside_the_repository(wheel: Path, tmp_path: Path) -> None:
    """A non-editable install: the console script and imports work with the repo out of reach."""
    env_dir = tmp_path / "venv"
    # no pip in the venv (fast): the dependencies come from the environment running the
    # tests, added as plain path entries (so its editable cdrhouse finder is not loaded)
    venv.EnvBuilder(system_site_packages=False, with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          check=True, capture_output=True, text=True).stdout.strip()
    deps = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib"), *site_module.getsitepackages()}
    (Path(site) / "_test_deps.pth").write_text("\n".join(sorted(deps)) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps",
                    "--no-index", "-q", str(wheel)], check=True, capture_output=True, text=True)
    away = tmp_path / "elsewhere"
    away.mkdir()
    clean = {"PATH": f"{env_dir / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)}

    version = subprocess.run([str(env_dir / "bin" / "cdrhouse"), "--version"], cwd=away,
                             env=clean, capture_output=True, text=True, check=True)
    assert "0.1.0" in version.stdout

    probe = ("import cdrhouse, cdrhouse.api.cli, cdrhouse.api.app, cdrhouse.tiering.archive\n"
             "from cdrhouse.engine.migrate import migrate\n"
             "from importlib.resources import files\n"
             "print(cdrhouse.__file__)\n"
             "print(sorted(p.name for p in files('cdrhouse.sql.schema').iterdir()"
             " if p.name.endswith('.sql'))[0])\n"
             "import importlib.util\n"
             f"print([m for m in {MAPPED!r}"
             " if importlib.util.find_spec(m)])\n")
    out = subprocess.run([str(py), "-c", probe], cwd=away, env=clean, capture_output=True,
                         text=True, check=True).stdout.splitlines()
    assert Path(out[0]).is_relative_to(env_dir), out[0]  # the installed copy, not the checkout
    assert out[1].endswith(".sql")
    assert out[2] == "[]"  # no generic top-level names installed


def test_no_module_of_the_package_can_kill_the_process() -> None:
    """Crash hooks are test code (tests/crashing_cli.py); the package never calls os._exit."""
    offenders = [str(py.relative_to(REPO)) for top in MAPPED for py in (REPO / top).rglob("*.py")
                 if "os._exit" in py.read_text(encoding="utf-8")]
    assert offenders == []
