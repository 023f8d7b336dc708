"""deploy/requirements.lock: every dependency pyproject.toml names is pinned, within its range,
and deploy/check_lock.py tells an installed set that differs from the lock."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

pytestmark = pytest.mark.unit
tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parents[3]
LOCK = ROOT / "deploy" / "requirements.lock"


def _check_lock():
    spec = importlib.util.spec_from_file_location("check_lock", ROOT / "deploy" / "check_lock.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_dependency_is_pinned_within_its_range() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = _check_lock().locked(LOCK)
    for line in project["dependencies"] + project["optional-dependencies"]["dev"]:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate():
            continue
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is in pyproject.toml but not in the lock: run bash deploy/lock.sh"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"the lock pins {name}=={pins[name]}, outside pyproject.toml's {req.specifier}: run bash deploy/lock.sh")


def test_check_lock_names_a_version_that_differs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    check = _check_lock()
    from importlib import metadata

    pytest_version = metadata.version("pytest")
    other_platform = "nothing-installed-here==1.0 ; sys_platform == 'no-such-platform'\n"
    good = tmp_path / "good.lock"
    good.write_text(f"pytest=={pytest_version}\n    # via sidstream\n{other_platform}")
    assert check.main(["check_lock", str(good)]) == 0
    bad = tmp_path / "bad.lock"
    bad.write_text(f"pytest==0.0.1\n{other_platform}")
    assert check.main(["check_lock", str(bad)]) == 1
    assert f"pytest: installed {pytest_version}, locked 0.0.1" in capsys.readouterr().out
    loose = tmp_path / "loose.lock"
    loose.write_text("pytest>=8\n")
    with pytest.raises(SystemExit, match="not an exact pin"):
        check.main(["check_lock", str(loose)])
