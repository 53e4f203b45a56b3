"""racegate for Python teams: the `racegate` binary this wheel installs, and a pytest plugin.

The binary does the work; this package only finds it (`find_racegate_bin`) and, as a pytest
plugin (`racegate.pytest_plugin`, registered through the `pytest11` entry point), turns the
scenario files a project's `[tool.racegate]` names into test items.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig


def find_racegate_bin() -> str:
    """The racegate binary: `RACEGATE_BIN`, else the one this wheel installed beside Python's
    scripts, else the first on PATH."""
    given = os.environ.get("RACEGATE_BIN")
    if given:
        return given
    exe = "racegate.exe" if sys.platform == "win32" else "racegate"
    for scripts in (sysconfig.get_path("scripts"), os.path.dirname(sys.executable)):
        candidate = os.path.join(scripts, exe)
        if os.path.isfile(candidate):
            return candidate
    found = shutil.which(exe)
    if found:
        return found
    raise FileNotFoundError(
        "racegate: no racegate binary found (set RACEGATE_BIN, or `pip install racegate`)"
    )
