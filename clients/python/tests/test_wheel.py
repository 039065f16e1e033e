"""The wheel builds and installs into a fresh venv, and the README's quick start runs from it."""

from __future__ import annotations

import pathlib
import re
import shutil
import subprocess
import sys
import venv

from conftest import CLIENT_ROOT, new_tenant_id


def quick_start() -> str:
    """The first ```python block of clients/python/README.md."""
    readme = (CLIENT_ROOT / "README.md").read_text()
    return re.search(r"```python\n(.*?)```", readme, re.S).group(1)


def test_wheel_installs_into_a_fresh_venv(tmp_path, server):
    # Built from a copy: setuptools writes build/ and *.egg-info next to the sources.
    source = tmp_path / "source"
    shutil.copytree(
        CLIENT_ROOT, source, ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__", "tests", "bench")
    )
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(source)],
        check=True,
    )
    (wheel,) = dist.glob("keyward_client-*.whl")
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)], check=True)
    code = quick_start().replace("127.0.0.1:50051", server.addr).replace('"acme"', repr(new_tenant_id()))
    run = subprocess.run([str(python), "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    # The installed copy was used, with its typing marker.
    where = subprocess.run(
        [str(python), "-c", "import keyward_client, pathlib; p = pathlib.Path(keyward_client.__file__).parent; print(p, (p / 'py.typed').exists())"],
        capture_output=True, text=True, check=True,
    ).stdout.split()
    assert "site-packages" in where[0] and where[1] == "True"
    assert pathlib.Path(where[0]) != CLIENT_ROOT / "src" / "keyward_client"
