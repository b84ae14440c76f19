"""requirements.lock pins every package pyproject.toml asks for (runtime and each extra), at a version
the requirement allows: a dependency added without re-running infra/lock.sh fails here."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent


def _pins() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;#]+)", line)
        if m:
            pins[canonicalize_name(m.group(1))] = Version(m.group(2))
    return pins


def _requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        reqs += [Requirement(r) for r in extra]
    return [r for r in reqs if canonicalize_name(r.name) != "argus"]  # `all` names the other extras


def test_every_requirement_is_pinned_within_its_range():
    pins = _pins()
    assert len(pins) > 100  # the whole environment, not just the direct dependencies
    for req in _requirements():
        if req.marker is not None and not req.marker.evaluate({"python_version": "3.11", "sys_platform": "linux"}):
            continue
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is in pyproject.toml but not in requirements.lock: run infra/lock.sh"
        assert req.specifier.contains(pins[name], prereleases=True), (str(req), str(pins[name]))


def test_torch_is_the_cpu_build_of_the_constraint():
    constraint = next(line for line in (ROOT / "constraints.txt").read_text().splitlines() if line.startswith("torch=="))
    assert str(_pins()["torch"]) == constraint.split("==")[1] + "+cpu"
    assert not any(name.startswith("nvidia-") for name in _pins())  # no CUDA runtime in the CPU lock
