"""A run killed mid-write leaves its temporary and the files its writer kept beside it; the next
run removes those of dead processes only."""

from __future__ import annotations

import os
import subprocess
import sys

from cloudclear.outputs import remove_stale_partials


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_partials_and_their_sqlite_sidecars_are_removed(tmp_path):
    dead = _dead_pid()
    names = [
        f".cat.partial-{dead}.gpkg",
        f".cat.partial-{dead}.gpkg-journal",  # SQLite's rollback journal of a GeoPackage killed mid-write
        f".cat.partial-{dead}.gpkg-wal",
        f".cat.partial-{dead}.gpkg-shm",
    ]
    kept = [
        f".cat.partial-{os.getpid()}.gpkg-journal",  # this process's own
        f".cat.partial-{dead}.gpkg-other",  # not a writer's sidecar
        f".other.partial-{dead}.gpkg-journal",  # another output's
        "cat.gpkg",
    ]
    for n in names + kept:
        (tmp_path / n).write_bytes(b"x")
    remove_stale_partials(tmp_path / "cat.gpkg")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)
