"""The node's settings: a TOML configuration file and the environment, never the command line for secrets.

```toml
[server]                      # the DICOM server (Orthanc REST API)
url = "http://127.0.0.1:8042"
username = "screening-node"
password = "..."              # or VERTEBRAL_FRACTURE_ORTHANC_PASSWORD
# name = "pacs-mirror"        # how the worklist names this server (default: its URL)
# ca_bundle = "/etc/ssl/hospital-ca.pem"   # for https with a private certificate authority

[worklist]
database = "sqlite:////var/lib/vertebral-fracture/worklist.db"   # or postgresql://user@host/dbname
# password = "..."            # PostgreSQL password (or PGPASSWORD, or ~/.pgpass)
patient = "id"                # or "pseudonym": a keyed hash of the patient ID (needs pseudonym_key)
# pseudonym_key = "..."       # or VERTEBRAL_FRACTURE_PSEUDONYM_KEY

[node]
# name = "ct-node-1"          # unique per node when several share one worklist (default: the host name)
backend = "auto"
poll_interval_s = 5
# work_dir = "/var/lib/vertebral-fracture/work"
# start = "beginning"         # first start on a server: "beginning" screens what it holds, "now" only new studies
```

Environment variables override the file: ``VERTEBRAL_FRACTURE_ORTHANC_URL``, ``VERTEBRAL_FRACTURE_ORTHANC_USERNAME``,
``VERTEBRAL_FRACTURE_ORTHANC_PASSWORD``, ``VERTEBRAL_FRACTURE_WORKLIST`` (database URL),
``VERTEBRAL_FRACTURE_WORKLIST_PASSWORD``, ``VERTEBRAL_FRACTURE_PSEUDONYM_KEY``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

from VertebralFractureLib.errors import InputError

log = logging.getLogger(__name__)

ENV_PREFIX = "VERTEBRAL_FRACTURE_"
DEFAULT_DATABASE = "vertebral-fracture-worklist.db"
DEFAULT_POLL_INTERVAL_S = 5.0
BACKENDS = ("auto", "classical", "monai", "totalsegmentator")
PATIENT_FIELDS = ("id", "pseudonym")
SECRET_KEYS = {("server", "password"), ("worklist", "password"), ("worklist", "pseudonym_key")}


@dataclass
class NodeConfig:
    url: str = ""
    username: str | None = None
    password: str | None = None
    server_name: str = ""
    ca_bundle: str | None = None
    allow_no_authentication: bool = False
    database: str = DEFAULT_DATABASE
    database_password: str | None = None
    patient: str = "id"
    pseudonym_key: str | None = None
    node_name: str = ""
    backend: str = "auto"
    device: str = "auto"
    poll_interval_s: float = DEFAULT_POLL_INTERVAL_S
    work_dir: str | None = None
    start: str = "beginning"

    def patient_label(self, patient_id: str) -> str:
        """What the worklist shows for a patient: the ID, or a keyed pseudonym that cannot be reversed without the
        key (the same patient always gets the same one, so repeat studies line up)."""
        if self.patient == "id":
            return patient_id
        digest = hmac.new((self.pseudonym_key or "").encode(), patient_id.encode(), hashlib.sha256).hexdigest()
        return f"P-{digest[:12]}"

    def __repr__(self) -> str:  # never print a secret, even in a debugger or a traceback
        hidden = {"password", "database_password", "pseudonym_key"}
        fields = ", ".join(f"{k}={'***' if k in hidden and v else v!r}" for k, v in vars(self).items())
        return f"NodeConfig({fields})"


def _read_file(path: Path) -> dict:
    import tomllib

    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(path, "configuration file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(path, f"cannot read the configuration ({error})") from None
    except tomllib.TOMLDecodeError as error:
        raise InputError(path, f"is not valid TOML ({error})") from None
    unknown = set(data) - {"server", "worklist", "node"}
    if unknown:
        raise InputError(path, f"unknown section(s) {', '.join(sorted(unknown))}: use [server], [worklist], [node]")
    holds_secret = any(isinstance(data.get(section), dict) and data[section].get(key)
                       for section, key in SECRET_KEYS)
    if holds_secret and path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s holds a password or key and other users may read it: chmod 600 it", path)
    return data


def load_config(path: str | Path | None = None, environ: dict | None = None, **overrides) -> NodeConfig:
    """The settings from the file (optional), then the environment, then the command line's non-secret options."""
    environ = os.environ if environ is None else environ
    data = _read_file(Path(path)) if path else {}
    server, worklist, node = (dict(data.get(name) or {}) for name in ("server", "worklist", "node"))
    where = str(path) if path else None

    def env(name: str, default=None):
        value = environ.get(ENV_PREFIX + name)
        return default if value in (None, "") else value

    config = NodeConfig(
        url=env("ORTHANC_URL", server.get("url", "")),
        username=env("ORTHANC_USERNAME", server.get("username")),
        password=env("ORTHANC_PASSWORD", server.get("password")),
        server_name=str(server.get("name", "")),
        ca_bundle=server.get("ca_bundle"),
        allow_no_authentication=bool(server.get("allow_no_authentication", False)),
        database=env("WORKLIST", worklist.get("database", DEFAULT_DATABASE)),
        database_password=env("WORKLIST_PASSWORD", worklist.get("password")),
        patient=str(worklist.get("patient", "id")),
        pseudonym_key=env("PSEUDONYM_KEY", worklist.get("pseudonym_key")),
        node_name=str(node.get("name", "")) or socket.gethostname(),
        backend=str(node.get("backend", "auto")),
        device=str(node.get("device", "auto")),
        poll_interval_s=float(node.get("poll_interval_s", DEFAULT_POLL_INTERVAL_S)),
        work_dir=node.get("work_dir"),
        start=str(node.get("start", "beginning")),
    )
    for key, value in overrides.items():
        if value is not None:
            setattr(config, key, value)
    config.server_name = config.server_name or config.url.rstrip("/")
    if config.backend not in BACKENDS:
        raise InputError(where, f"[node] backend {config.backend!r}: one of {', '.join(BACKENDS)}")
    if config.patient not in PATIENT_FIELDS:
        raise InputError(where, f"[worklist] patient {config.patient!r}: one of {', '.join(PATIENT_FIELDS)}")
    if config.patient == "pseudonym" and not config.pseudonym_key:
        raise InputError(where, "[worklist] patient = \"pseudonym\" needs a pseudonym_key (or "
                                f"{ENV_PREFIX}PSEUDONYM_KEY)")
    if config.start not in ("beginning", "now"):
        raise InputError(where, f"[node] start {config.start!r}: \"beginning\" or \"now\"")
    if config.poll_interval_s <= 0:
        raise InputError(where, "[node] poll_interval_s must be positive")
    return config


def check_server_settings(config: NodeConfig, where: str | None) -> None:
    """What ``serve`` needs beyond the worklist: the server's URL, and credentials unless explicitly told none."""
    if not config.url:
        raise InputError(where, f"no server URL: set [server] url or {ENV_PREFIX}ORTHANC_URL")
    if config.username is None and not config.allow_no_authentication:
        raise InputError(where, f"no credentials for {config.url}: set [server] username and password (or "
                                f"{ENV_PREFIX}ORTHANC_USERNAME / _PASSWORD)")
