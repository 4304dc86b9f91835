"""A small client of Orthanc's REST API: the change feed, studies and series, instance download and upload.

Only what the screening node needs, over HTTP(S) with ``requests``. Credentials travel in the Authorization header
(never in a URL, so no log line or error message shows them). A server that cannot be reached or answers 5xx raises
:class:`OrthancUnavailable` (the node waits and tries again); any other refusal raises :class:`OrthancError`.
"""

from __future__ import annotations

import logging
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from VertebralFractureLib.errors import VertebralFractureError

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 60.0
"""One HTTP request to the server; a series download streams, so only the gaps between its chunks count."""
CHANGES_PAGE = 100
"""Changes read per request of the feed (Orthanc's own maximum is 10,000)."""


class OrthancError(VertebralFractureError):
    """The server refused a request (a 4xx answer, or an answer that is not what its REST API documents)."""


class OrthancUnavailable(OrthancError):
    """The server cannot be reached now (connection refused or reset, timeout, 5xx): worth trying again later."""


class NotFound(OrthancError):
    """The resource is not (or no longer) on the server."""


class CredentialsRefused(OrthancError):
    """The server refuses the node's user name and password (401): nothing works until the settings change."""


@dataclass
class Change:
    seq: int
    change_type: str
    resource_type: str
    resource_id: str
    date: str
    """Orthanc's own clock, ``YYYYMMDDTHHMMSS``."""


class OrthancClient:
    """One Orthanc server. ``url`` is the REST API's root (``http://host:8042`` or with a path prefix behind a
    reverse proxy); ``username``/``password`` the HTTP Basic credentials (None: no authentication)."""

    def __init__(self, url: str, username: str | None = None, password: str | None = None,
                 verify: bool | str = True, timeout_s: float = REQUEST_TIMEOUT_S):
        import requests

        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise VertebralFractureError(f"{url!r}: the server URL must start with http:// or https://")
        if parsed.username or parsed.password:
            raise VertebralFractureError("the server URL must not hold credentials: give the user name and password "
                                         "in the configuration file or the environment")
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.session, self.anonymous = requests.Session(), requests.Session()
        for session in (self.session, self.anonymous):
            session.verify = verify
            session.trust_env = False  # no proxy or .netrc from the environment: the server is reached directly
        if username is not None:
            self.session.auth = (username, password or "")

    # ---- transport ---------------------------------------------------------------------------------------------

    def _request(self, method: str, path: str, authenticated: bool = True, **kwargs):
        import requests

        kwargs.setdefault("timeout", self.timeout_s)
        session = self.session if authenticated else self.anonymous
        try:
            response = session.request(method, self.url + path, **kwargs)
        except (requests.ConnectionError, requests.Timeout) as error:
            raise OrthancUnavailable(f"{self.url}: cannot reach the server ({type(error).__name__})") from None
        if response.status_code >= 500:
            raise OrthancUnavailable(f"{self.url}{path}: the server answered {response.status_code}")
        return response

    def _json(self, method: str, path: str, **kwargs):
        response = self._request(method, path, **kwargs)
        if response.status_code == 401:
            raise CredentialsRefused(f"{self.url}: the server refused the credentials (401)")
        if response.status_code == 404:
            raise NotFound(f"{self.url}{path}: not found")
        if response.status_code >= 400:
            raise OrthancError(f"{self.url}{path}: the server answered {response.status_code}")
        try:
            return response.json()
        except ValueError:
            raise OrthancError(f"{self.url}{path}: the answer is not JSON") from None

    # ---- server ------------------------------------------------------------------------------------------------

    def system(self) -> dict:
        return self._json("GET", "/system")

    def requires_authentication(self) -> bool:
        """True when the server refuses a request without credentials (what a production server must do)."""
        response = self._request("GET", "/system", authenticated=False)
        return response.status_code == 401

    # ---- change feed -------------------------------------------------------------------------------------------

    def changes(self, since: int, limit: int = CHANGES_PAGE) -> tuple[list[Change], int, bool]:
        """(changes after ``since``, the last sequence number they reach, whether the feed is read to its end)."""
        data = self._json("GET", f"/changes?since={int(since)}&limit={int(limit)}")
        changes = [Change(int(c["Seq"]), str(c["ChangeType"]), str(c.get("ResourceType", "")), str(c["ID"]),
                          str(c.get("Date", ""))) for c in data.get("Changes", [])]
        return changes, int(data.get("Last", since)), bool(data.get("Done", True))

    def last_change(self) -> int:
        """The sequence number of the newest change the server holds (0 for an empty server)."""
        data = self._json("GET", "/changes?last")
        return int(data.get("Last", 0))

    # ---- resources ---------------------------------------------------------------------------------------------

    def study(self, study_id: str) -> dict:
        return self._json("GET", f"/studies/{study_id}")

    def study_series(self, study_id: str) -> list[dict]:
        return self._json("GET", f"/studies/{study_id}/series")

    def series(self, series_id: str) -> dict:
        return self._json("GET", f"/series/{series_id}")

    def series_shared_tags(self, series_id: str) -> dict:
        return self._json("GET", f"/series/{series_id}/shared-tags?simplify")

    def series_instances(self, series_id: str) -> list[dict]:
        return self._json("GET", f"/series/{series_id}/instances")

    def download_series(self, series_id: str, folder: Path) -> list[Path]:
        """Every instance of the series as a DICOM file in ``folder`` (named by Orthanc's instance id)."""
        import requests

        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for instance in self.series_instances(series_id):
            path = folder / f"{instance['ID']}.dcm"
            response = self._request("GET", f"/instances/{instance['ID']}/file", stream=True)
            if response.status_code == 401:
                raise CredentialsRefused(f"{self.url}: the server refused the credentials (401)")
            if response.status_code == 404:
                raise NotFound(f"{self.url}/instances/{instance['ID']}: deleted during the download")
            if response.status_code >= 400:
                raise OrthancError(f"{self.url}/instances/{instance['ID']}/file: the server answered "
                                   f"{response.status_code}")
            try:
                with open(path, "wb") as out:
                    for chunk in response.iter_content(chunk_size=1 << 20):
                        out.write(chunk)
            except (requests.ConnectionError, requests.Timeout):
                raise OrthancUnavailable(f"{self.url}: the connection broke during a download") from None
            written.append(path)
        return written

    def upload(self, data: bytes) -> dict:
        """Store one DICOM instance; returns Orthanc's answer (ID, ParentSeries, ParentStudy, Status)."""
        return self._json("POST", "/instances", data=data, headers={"Content-Type": "application/dicom"})

    def delete_series(self, series_id: str) -> None:
        response = self._request("DELETE", f"/series/{series_id}")
        if response.status_code == 401:
            raise CredentialsRefused(f"{self.url}: the server refused the credentials (401)")
        if response.status_code not in (200, 404):
            raise OrthancError(f"{self.url}/series/{series_id}: delete refused ({response.status_code})")

    def series_link(self, series_id: str) -> str:
        """Where a person (with their own credentials) finds the series in the server's REST API."""
        return f"{self.url}/series/{series_id}"
