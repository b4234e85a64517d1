"""Temporary files named after the process that writes them, and the clean-up of dead ones.

Writers (the catalog, inference outputs) write to a hidden name carrying their PID and rename
into place when complete. A run killed by SIGKILL cannot delete its temporary; the next run for
the same target deletes the ones whose process is gone.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path


def remove_orphans(folder: Path, glob: str, pattern: re.Pattern[str]) -> None:
    """Delete files (or folders) in ``folder`` matching ``glob`` whose ``pid`` group names a dead process.

    ``pattern`` must match the whole name and have a named group ``pid``. Files of this process,
    of live processes and of other users are kept.
    """
    for p in folder.glob(glob):
        m = pattern.match(p.name)
        if not m or int(m.group("pid")) == os.getpid():
            continue
        try:
            os.kill(int(m.group("pid")), 0)
        except ProcessLookupError:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        except PermissionError:
            pass  # alive, another user's
