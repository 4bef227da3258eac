"""Ray's token authentication for processes that join a cluster by address.

Clusters started by Ray 2.5x use token authentication by default, and a process joining one
by address must opt in with ``RAY_AUTH_MODE=token`` or it fails with "Authentication token
is missing". Ray reads that variable when it is imported, so the opt-in must happen before
``import ray``: the ``tierserve`` command calls ``opt_into_token_auth`` first thing. This
module must not import ray.
"""

from __future__ import annotations

import os
from pathlib import Path

HINT = ("if the cluster uses Ray's token authentication (the default), set RAY_AUTH_MODE=token "
        "before Python starts (the `tierserve` command does this when it finds a token)")


def token_available() -> bool:
    return auth_token() is not None


def auth_token() -> str | None:
    """The head's token as Ray looks for it: RAY_AUTH_TOKEN, else the file RAY_AUTH_TOKEN_PATH
    names, else ~/.ray/auth_token (written by `ray start --head`); None without one."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    try:
        return token_file.read_text().strip() or None
    except OSError:
        return None


def opt_into_token_auth() -> bool:
    """Set RAY_AUTH_MODE=token when the caller chose no mode and a token is at hand (the
    RAY_AUTH_TOKEN variable or ~/.ray/auth_token, written by the head); True if it did."""
    if os.environ.get("RAY_AUTH_MODE") or not token_available():
        return False
    os.environ["RAY_AUTH_MODE"] = "token"
    return True
