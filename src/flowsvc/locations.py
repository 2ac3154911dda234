"""Where flowsvc keeps its data when no database URL is given.

The default must not depend on the working directory: `keys create` run from one directory
and `serve` run from another would otherwise use two databases, and the minted key would be
refused as invalid. So it lives in the user's data directory, the same from anywhere.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

DATABASE_FILE = "flowsvc.db"


def data_dir(env: Mapping[str, str] | None = None) -> Path:
    """$FLOWSVC_DATA_DIR, else $XDG_DATA_HOME/flowsvc, else ~/.local/share/flowsvc."""
    env = os.environ if env is None else env
    if env.get("FLOWSVC_DATA_DIR"):
        return Path(env["FLOWSVC_DATA_DIR"]).expanduser().absolute()
    if env.get("XDG_DATA_HOME"):
        return Path(env["XDG_DATA_HOME"]).expanduser().absolute() / "flowsvc"
    home = Path(env["HOME"]) if env.get("HOME") else Path.home()
    return home / ".local" / "share" / "flowsvc"


def default_database_url(env: Mapping[str, str] | None = None) -> str:
    return f"sqlite+aiosqlite:///{data_dir(env) / DATABASE_FILE}"
