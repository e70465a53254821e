"""Who may talk to the sweep's own Ray: only processes that hold this user's token.

Ray binds its GCS, raylets and workers to every interface of the machine, so a local Ray that
anyone on the network could reach would run their code. The local Ray a sweep starts therefore
uses Ray's token authentication (RAY_AUTH_MODE=token): every gRPC call to the GCS, the raylets and
the workers must carry the token, and a client without it is refused (UNAUTHENTICATED).

The token is this user's: 256 random bits in ~/.certsweep/ray_auth_token (or the file named by
CERTSWEEP_RAY_TOKEN), created with mode 0600 in a folder of mode 0700, never printed, never written
into a sweep directory. Ray's own default token file (~/.ray/auth_token) is created world-readable,
which is why certsweep keeps its own. A sweep on a cluster (`--address` / RAY_ADDRESS) leaves the
cluster's auth settings as the user exported them.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from pathlib import Path
from typing import Callable

TOKEN_ENV = "CERTSWEEP_RAY_TOKEN"
"""A file to keep the token in instead of ~/.certsweep/ray_auth_token."""


def token_path() -> Path:
    return Path(os.environ.get(TOKEN_ENV) or Path.home() / ".certsweep" / "ray_auth_token")


def user_token(log: Callable[[str], None] = print) -> Path:
    """The user's token file: created (0600, in a 0700 folder) when missing; a file that others
    could read is made private again, saying so."""
    path = token_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            os.chmod(path, 0o600)
            log(f"warning: {path} was readable by others (mode {mode:o}); it is 0600 now, "
                "but a token others could read should be replaced: delete the file")
        if not path.read_text().strip():
            raise ValueError(f"{path} is empty: delete it, and certsweep makes a new token") from None
        return path
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return path


def prepare_local_auth(log: Callable[[str], None] = print) -> None:
    """Make the local Ray that ray.init(address="local") starts next require the user's token.

    Ray (2.59 and later) turns token authentication on for a new local cluster by itself when
    RAY_AUTH_MODE is unset, and then refreshes the configuration this process cached when it
    imported Ray; setting RAY_AUTH_MODE=token ourselves after that import would leave the driver's
    cached mode at disabled. So RAY_AUTH_MODE is left unset (a `disabled` exported by the user is
    dropped, saying so) and the token comes from the user's file through RAY_AUTH_TOKEN_PATH (a
    token the user exported in RAY_AUTH_TOKEN wins, as in Ray). `check_local_auth` verifies it.
    """
    mode = os.environ.get("RAY_AUTH_MODE", "")
    if mode.lower() != "token":
        if mode:
            log(f"note: RAY_AUTH_MODE={mode} is ignored: the sweep's own Ray always requires a token")
        os.environ.pop("RAY_AUTH_MODE", None)
    if not os.environ.get("RAY_AUTH_TOKEN"):
        os.environ["RAY_AUTH_TOKEN_PATH"] = str(user_token(log))


def check_local_auth() -> None:
    """After ray.init: the local Ray runs with token authentication (Ray sets RAY_AUTH_MODE=token
    in this process when it enables it), or the sweep stops here."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        raise RuntimeError("the local Ray did not start with token authentication (RAY_AUTH_MODE is "
                           f"{os.environ.get('RAY_AUTH_MODE')!r}); certsweep needs Ray >= 2.59 for it")


class HideOptOut(logging.Filter):
    """Drops Ray's "Set RAY_AUTH_MODE=disabled to opt out" hint for the sweep's own Ray."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "to opt out" not in record.getMessage()
