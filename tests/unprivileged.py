"""Running the CLI as an unprivileged user, for tests of permission errors.

Root writes through ``chmod`` (and CI runs as root), so a permission test run as root would
test nothing. As root, such a test runs the CLI as ``nobody`` (uid/gid 65534) instead: the
permission error is then the kernel's, not a simulation. That needs the interpreter, the
repository and the packages to be readable by ``nobody``, and the test's files under a
world-traversable folder (pytest's own base is private to root). :func:`why_not` says,
precisely, why it cannot be done here, for the skip message.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
from pathlib import Path

NOBODY = 65534
ROOT = Path(__file__).resolve().parents[1]


def as_nobody_env(home: Path) -> dict[str, str]:
    return {
        **os.environ,
        "HOME": str(home),
        "PYTHONDONTWRITEBYTECODE": "1",  # the repository is not nobody's to write
        "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path[1:]]),
    }


def why_not() -> str | None:
    """``None`` when this process (root) can run the CLI as ``nobody``, else why not."""
    if os.geteuid() != 0:
        return "not root: cannot switch to another user"
    probe = [sys.executable, "-c", "import asyncingest.cli.main, pyarrow"]
    try:
        done = subprocess.run(
            probe,
            user=NOBODY,
            group=NOBODY,
            extra_groups=[],
            cwd=ROOT,
            env=as_nobody_env(Path(tempfile.gettempdir())),
            capture_output=True,
            text=True,
            timeout=60,
        )
    except OSError as exc:  # e.g. the interpreter sits in a folder only root may enter
        return f"user nobody cannot run {sys.executable}: {exc}"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        return f"user nobody cannot import asyncingest with {sys.executable}: {last}"
    return None


def shared_dir() -> Path:
    """A fresh folder under the system temp folder that every user may enter and read."""
    path = Path(tempfile.mkdtemp(prefix="asyncingest-test-"))
    path.chmod(0o755)
    return path


async def run_cli_as_nobody(cfg_path: Path, home: Path, *args: str) -> tuple[int, str]:
    """``python -m asyncingest run CFG --quiet ARGS`` as user ``nobody``."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "asyncingest",
        "run",
        str(cfg_path),
        "--quiet",
        *args,
        cwd=ROOT,
        env=as_nobody_env(home),
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    return await proc.wait(), out.decode()
