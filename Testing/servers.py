"""Real servers for the tests, started as child processes on 127.0.0.1: Orthanc (Debian package ``orthanc``) and
PostgreSQL (Debian package ``postgresql``). Each start is skipped by the caller with the reason when the program is
not installed or cannot start here."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

START_TIMEOUT_S = 30.0


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def orthanc_missing() -> str | None:
    """Why Orthanc cannot run here, or None."""
    if shutil.which("Orthanc") is None:
        return "Orthanc is not installed (Debian package 'orthanc'; .ci/run installs it)"
    return None


class OrthancServer:
    """Orthanc in the foreground as a child process, with its own storage folder and configuration file.

    HTTP only on a free port; remote access refused (Orthanc 1.10 has no bind-address setting: it listens on every
    interface and answers only loopback clients); the DICOM listener off (the node uses the REST API); no plugins.
    """

    def __init__(self, folder: Path, users: dict | None = None, stable_age_s: int = 1,
                 overwrite_instances: bool = True):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.users = users
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = self.folder / "orthanc.json"
        storage = self.folder / "storage"
        self.config = {
            "Name": "vertebral-fracture-test",
            "StorageDirectory": str(storage), "IndexDirectory": str(storage),
            "HttpPort": self.port, "HttpServerEnabled": True, "RemoteAccessAllowed": False,
            "DicomServerEnabled": False, "Plugins": [], "StableAge": stable_age_s,
            "OverwriteInstances": overwrite_instances, "HttpThreadsCount": 8, "ConcurrentJobs": 1,
            "AuthenticationEnabled": users is not None, "RegisteredUsers": users or {},
        }
        self.config_path.write_text(json.dumps(self.config, indent=1), encoding="utf-8")
        self.process: subprocess.Popen | None = None
        self.log_path = self.folder / "orthanc.log"

    @property
    def auth(self):
        if not self.users:
            return None
        return next(iter(self.users.items()))

    def start(self) -> OrthancServer:
        import requests

        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(["Orthanc", str(self.config_path)], stdout=log, stderr=subprocess.STDOUT,
                                        cwd=self.folder)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc stopped at start: {self.log_tail()}")
            try:
                if requests.get(self.url + "/system", auth=self.auth, timeout=2).status_code == 200:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"Orthanc did not answer within {START_TIMEOUT_S} s: {self.log_tail()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()  # waits for the exit: the index database is locked until then
        self.start()

    def log_tail(self) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").strip().splitlines()[-3:])
        except OSError:
            return "(no log)"

    # ---- what the tests do with it --------------------------------------------------------------------------

    def get(self, path: str):
        import requests

        response = requests.get(self.url + path, auth=self.auth, timeout=30)
        response.raise_for_status()
        return response.json()

    def upload_files(self, files) -> list[dict]:
        import requests

        answers = []
        for path in files:
            response = requests.post(self.url + "/instances", data=Path(path).read_bytes(), auth=self.auth,
                                     timeout=30)
            response.raise_for_status()
            answers.append(response.json())
        return answers

    def download(self, instance_id: str) -> bytes:
        import requests

        response = requests.get(f"{self.url}/instances/{instance_id}/file", auth=self.auth, timeout=30)
        response.raise_for_status()
        return response.content


def postgresql_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


class PostgresServer:
    """A throwaway PostgreSQL cluster in ``folder`` listening on 127.0.0.1 only, password authentication (scram).

    initdb and postgres refuse to run as root: as root they run as the ``postgres`` system user (the Debian
    package creates it) through ``setpriv``; as any other user, as that user."""

    def __init__(self, password: str = "worklist-test-password"):
        # Its own folder in the system's temporary folder: the server's user must reach it (pytest's folders are
        # private to the user running the tests).
        self.folder = Path(tempfile.mkdtemp(prefix="vertebral-fracture-postgres-"))
        self.password = password
        self.port = free_port()
        self.user = "vf"
        self.process: subprocess.Popen | None = None

    @staticmethod
    def missing() -> str | None:
        if postgresql_bin() is None:
            return "PostgreSQL is not installed (Debian package 'postgresql'; .ci/run installs it)"
        if os.geteuid() == 0 and shutil.which("setpriv") is None:
            return "running as root without setpriv (util-linux): PostgreSQL refuses to run as root"
        if os.geteuid() == 0:
            import pwd

            try:
                pwd.getpwnam("postgres")
            except KeyError:
                return "running as root and no 'postgres' user to run PostgreSQL as"
        return None

    def _as_owner(self, command: list[str]) -> list[str]:
        # setpriv executes the program in place (runuser would stay in between as its parent): stopping the child
        # process stops the server itself.
        if os.geteuid() != 0:
            return command
        return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--", *command]

    def start(self) -> PostgresServer:
        binaries = postgresql_bin()
        data, sockets = self.folder / "data", self.folder / "sockets"
        sockets.mkdir(exist_ok=True)
        password_file = self.folder / "password"
        password_file.write_text(self.password + "\n")
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres")
            shutil.chown(sockets, "postgres")
            shutil.chown(password_file, "postgres")
        done = subprocess.run(self._as_owner([str(binaries / "initdb"), "-D", str(data), "-U", self.user,
                                              "-A", "scram-sha-256", f"--pwfile={password_file}", "--no-sync"]),
                              capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {(done.stderr or done.stdout).strip()[-300:]}")
        password_file.unlink()
        log = open(self.folder / "postgres.log", "ab")
        self.process = subprocess.Popen(
            self._as_owner([str(binaries / "postgres"), "-D", str(data), "-c", "listen_addresses=127.0.0.1",
                            "-p", str(self.port), "-c", f"unix_socket_directories={sockets}", "-c", "fsync=off"]),
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("PostgreSQL stopped at start: "
                                   + (self.folder / "postgres.log").read_text(errors="replace")[-500:])
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                time.sleep(0.3)
                return self
            time.sleep(0.1)
        raise RuntimeError(f"PostgreSQL did not listen within {START_TIMEOUT_S} s")

    @property
    def url(self) -> str:
        """The URL without the password (it travels separately, as in a deployment)."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # "fast shutdown": does not wait for clients to disconnect
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        shutil.rmtree(self.folder, ignore_errors=True)
