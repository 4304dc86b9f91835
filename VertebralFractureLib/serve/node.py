"""The screening node: follows a DICOM server's change feed, analyses every study that becomes stable, sends the
DICOM SEG, the SR and the report (Encapsulated PDF) back into the study and keeps the worklist.

One study at a time per node; several nodes share the work through one PostgreSQL worklist. What makes a study
processed exactly once across kills and restarts:

- the feed position and the queued studies are written in one transaction (:meth:`Worklist.queue_study`);
- a job is claimed in the database; a node that restarts takes back what it was running;
- a study's inputs are fingerprinted (its image series and when the server last changed them): a feed event for a
  study whose inputs were already analysed (the node's own outputs arriving, for one) does nothing; a study re-sent
  or changed is analysed again;
- outputs carry fresh UIDs; once the new ones are stored, every earlier output of this program in the study is
  deleted, so a run interrupted after sending leaves nothing behind twice;
- the worklist row and the job's end are committed together, after the outputs are on the server.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path

from VertebralFractureLib import __version__
from VertebralFractureLib.errors import VertebralFractureError
from VertebralFractureLib.serve import worklist as worklist_mod
from VertebralFractureLib.serve.config import NodeConfig
from VertebralFractureLib.serve.orthanc import (
    CredentialsRefused,
    NotFound,
    OrthancClient,
    OrthancError,
    OrthancUnavailable,
)
from VertebralFractureLib.serve.selection import SeriesInfo, StudyChoice, choose_series

log = logging.getLogger(__name__)

RETRY_MAX_S = 20.0
"""Longest wait between two tries while the server or the database is unreachable (the wait doubles from the poll
interval up to this), so a study stored right after a server restart is taken within about this long."""
FEED_PAGES_PER_ROUND = 20
ANALYSED, NO_CHANGE = "analysed", "no change"
"""Feed pages read before the node looks at its queue again (a backlog of changes does not starve the analyses)."""


class ServerRefused(VertebralFractureError):
    """The node will not run against this server (authentication off, credentials refused)."""


class Node:
    """One screening node. ``run()`` loops until stopped; :meth:`step` does one round (tests and ``--once``)."""

    def __init__(self, config: NodeConfig, orthanc: OrthancClient | None = None,
                 worklist: worklist_mod.Worklist | None = None):
        self.config = config
        self.orthanc = orthanc or OrthancClient(config.url, config.username, config.password,
                                                verify=config.ca_bundle or True)
        self._worklist = worklist
        self.server = config.server_name or config.url
        self.stop_event = threading.Event()
        self._unavailable_since: float | None = None

    # ---- connections -------------------------------------------------------------------------------------------

    @property
    def worklist(self) -> worklist_mod.Worklist:
        if self._worklist is None:
            self._worklist = open_worklist(self.config)
        return self._worklist

    def check_server(self) -> dict:
        """Refuse a server that answers without authentication (unless the configuration allows it) or refuses
        the node's credentials; returns the server's /system answer."""
        if not self.orthanc.requires_authentication() and not self.config.allow_no_authentication:
            raise ServerRefused(f"{self.orthanc.url} answers without authentication: the node refuses to send "
                                "patient data to an open server (turn on AuthenticationEnabled, or set [server] "
                                "allow_no_authentication = true / --allow-no-authentication to run anyway)")
        try:
            return self.orthanc.system()
        except OrthancUnavailable:
            raise
        except OrthancError as error:
            raise ServerRefused(str(error)) from None

    # ---- the loop ----------------------------------------------------------------------------------------------

    def run(self, once: bool = False) -> int:
        """Follow the feed and analyse until stopped (``once``: until the feed is read and the queue is empty).
        Returns the number of studies analysed (not counting feed events that needed no analysis)."""
        done_count, wait, checked = 0, self.config.poll_interval_s, False
        while not self.stop_event.is_set():
            try:
                if not checked:  # also when the server is not up yet as the node starts
                    self.check_server()
                    self.sync_feed_start()
                    checked = True
                feed_done = self.read_feed()
                worked = self.process_next()
                done_count += int(worked == ANALYSED)
                if self._unavailable_since is not None:
                    log.warning("%s reachable again after %.0f s", self.orthanc.url,
                                time.monotonic() - self._unavailable_since)
                    self._unavailable_since = None
                    self.sync_feed_start()
                wait = self.config.poll_interval_s
                if once and feed_done and not worked and self.worklist.jobs_waiting(self.server) == 0:
                    break
                if feed_done and not worked:
                    self.stop_event.wait(self.config.poll_interval_s)
            except (OrthancUnavailable, worklist_mod.DatabaseUnavailable) as error:
                if once:
                    raise
                if self._unavailable_since is None:
                    self._unavailable_since = time.monotonic()
                    log.warning("%s; trying again every %.0f s at most", error, RETRY_MAX_S)
                if isinstance(error, worklist_mod.DatabaseUnavailable):
                    self._worklist = None
                self.stop_event.wait(wait)
                wait = min(RETRY_MAX_S, wait * 2)
        return done_count

    def sync_feed_start(self) -> None:
        """Set the feed position on a first start (``start``: the beginning or now), and start over when the
        server's change log is older than the position (a server set up anew: its sequence numbers restart)."""
        position = self.worklist.feed_position(self.server)
        last = self.orthanc.last_change()
        if position is None:
            start = 0 if self.config.start == "beginning" else last
            if self.worklist.set_feed_position(self.server, start, None):
                log.info("following %s from change %d", self.orthanc.url, start)
        elif last < position:
            log.warning("%s holds changes up to %d only, the worklist had read up to %d: the server's database was "
                        "set up anew; reading its feed from the start (studies analysed before are not analysed "
                        "again unless their images changed)", self.orthanc.url, last, position)
            self.worklist.set_feed_position(self.server, 0, position)

    def read_feed(self) -> bool:
        """Queue the studies that became stable since the stored position; True when the feed is read to its end."""
        for _ in range(FEED_PAGES_PER_ROUND):
            position = self.worklist.feed_position(self.server) or 0
            changes, last, done = self.orthanc.changes(position)
            if last <= position and not changes:
                return True
            with self.worklist.transaction():
                if not self.worklist.set_feed_position(self.server, last, position):
                    continue  # another node read these changes first; read on from where it left off
                for change in changes:
                    if change.change_type == "StableStudy":
                        self.worklist.queue_study(self.server, change.resource_id, change.seq, change.date)
            if done:
                return True
        return False

    def process_next(self) -> str | None:
        """Handle the next queued study; None when the queue is empty, else :data:`ANALYSED` or :data:`NO_CHANGE`."""
        job = self.worklist.claim_job(self.server, self.config.node_name)
        if job is None:
            return None
        heartbeat = Heartbeat(self.config, job)
        heartbeat.start()
        try:
            return self.process(job)
        except (OrthancUnavailable, worklist_mod.DatabaseUnavailable):
            heartbeat.stop()
            try:
                self.worklist.release_job(job, self.config.node_name)
            except worklist_mod.DatabaseUnavailable:
                pass  # taken back on restart, or by another node after the lease
            raise
        finally:
            heartbeat.stop()

    # ---- one study ---------------------------------------------------------------------------------------------

    def process(self, job: worklist_mod.Job) -> str:
        started = time.monotonic()
        try:
            study = self.orthanc.study(job.orthanc_study)
        except NotFound:
            log.info("study %s was deleted before its analysis", job.orthanc_study)
            self.worklist.finish_job(job, self.config.node_name, None, None)
            return NO_CHANGE
        if not study.get("IsStable", True):
            # Images still arriving: the server announces the study stable again later, and it is queued then.
            self.worklist.finish_job(job, self.config.node_name, None, None)
            return NO_CHANGE
        choice = self.choose(study)
        fingerprint = inputs_fingerprint(choice)
        if job.attempts > worklist_mod.MAX_ATTEMPTS:
            row = self.base_row(study)
            row.update(status="failed", reason=f"the analysis was interrupted {job.attempts - 1} times (the node "
                                               "stopped during it each time): not tried again until the study "
                                               "changes")
            self.worklist.finish_job(job, self.config.node_name, fingerprint, row)
            log.error("study %s: %s", row["study_uid"], row["reason"])
            return ANALYSED
        if fingerprint == job.fingerprint:
            log.info("study %s: its images are unchanged since their analysis; nothing to do",
                     study["MainDicomTags"].get("StudyInstanceUID"))
            self.worklist.finish_job(job, self.config.node_name, fingerprint, None)
            return NO_CHANGE
        row = self.base_row(study)
        row["stable_at"] = job.stable_at
        row["skipped_series"] = choice.skipped_records()
        sent: list[str] = []
        try:
            if choice.chosen is None:
                row.update(status="skipped", reason=choice.reason)
                log.info("study %s skipped: %s", row["study_uid"], choice.reason)
            else:
                sent = self.analyse(job, choice.chosen, row)
            self.replace_outputs(job.orthanc_study, keep=sent)
        except (OrthancUnavailable, CredentialsRefused):
            raise
        except OrthancError as error:  # the study changed under the node, or the server refused an output
            row.update(status="failed", reason=str(error))
            log.warning("study %s failed: %s", row["study_uid"], error)
        row["analysis_s"] = round(time.monotonic() - started, 1)
        if not self.worklist.finish_job(job, self.config.node_name, fingerprint, row):
            log.warning("study %s was taken over by another node while this one analysed it", row["study_uid"])
        return ANALYSED

    def choose(self, study: dict) -> StudyChoice:
        infos = []
        for series_id in study.get("Series", []):
            try:
                series = self.orthanc.series(series_id)
            except NotFound:
                continue
            modality = (series.get("MainDicomTags") or {}).get("Modality")
            shared = self.orthanc.series_shared_tags(series_id) if modality == "CT" else {}
            infos.append(SeriesInfo.from_orthanc(series, shared))
        return choose_series(infos)

    def base_row(self, study: dict) -> dict:
        tags = study.get("MainDicomTags") or {}
        patient = study.get("PatientMainDicomTags") or {}
        return {
            "server": self.server, "study_uid": tags.get("StudyInstanceUID", ""), "orthanc_study": study["ID"],
            "patient": self.config.patient_label(str(patient.get("PatientID", ""))),
            "study_date": tags.get("StudyDate", ""), "study_description": tags.get("StudyDescription", ""),
            "node": self.config.node_name, "version": __version__, "analysed_at": worklist_mod.now_text(),
        }

    def analyse(self, job: worklist_mod.Job, series: SeriesInfo, row: dict) -> list[str]:
        """Download the series, run the pipeline, send SEG + SR + PDF; fill ``row``; returns the Orthanc ids of the
        series sent. An analysis that fails is recorded, not raised (the server going away is raised)."""
        from VertebralFractureLib.serve.analysis import run_analysis

        row.update(series_uid=series.series_uid, series_description=series.description)
        work_root = Path(self.config.work_dir) if self.config.work_dir else Path(tempfile.gettempdir())
        node = re.sub(r"[^A-Za-z0-9_.-]", "_", self.config.node_name)
        folder = work_root / f"vertebral-fracture-{node}-{job.orthanc_study}"
        shutil.rmtree(folder, ignore_errors=True)
        try:
            self.orthanc.download_series(series.orthanc_id, folder / "series")
            outcome = run_analysis(folder, self.config, row)
            if outcome is None:
                return []
            sent = []
            for path in outcome:
                answer = self.orthanc.upload(path.read_bytes())
                if answer.get("ParentStudy") != job.orthanc_study:
                    log.warning("study %s: output %s was filed under another study (%s)", row["study_uid"],
                                path.name, answer.get("ParentStudy"))
                sent.append(str(answer["ParentSeries"]))
            row["output_series"] = sent
            row["links"] = [self.orthanc.series_link(s) for s in sent]
            log.info("study %s: %s; sent SEG, SR and PDF", row["study_uid"], row["status"])
            return sent
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def replace_outputs(self, orthanc_study: str, keep: list[str]) -> None:
        """Delete this program's earlier outputs in the study (all but the series in ``keep``)."""
        try:
            study = self.orthanc.study(orthanc_study)
        except NotFound:
            return
        for series_id in study.get("Series", []):
            if series_id in keep:
                continue
            try:
                info = SeriesInfo.from_orthanc(self.orthanc.series(series_id))
            except NotFound:
                continue
            if info.is_output:
                self.orthanc.delete_series(series_id)
                log.info("deleted the earlier output %s (%s)", info.name, info.series_uid)


def inputs_fingerprint(choice: StudyChoice) -> str:
    """What identifies the inputs of an analysis: every image series of the study (not this program's outputs),
    its number of images and when the server last stored one of them (a re-sent image counts as a change)."""
    series = [choice.chosen] if choice.chosen is not None else []
    series += [s for s, _ in choice.skipped]
    text = "\n".join(sorted(f"{s.series_uid}|{s.images}|{s.last_update}" for s in series))
    return hashlib.sha256(text.encode()).hexdigest()


def open_worklist(config: NodeConfig) -> worklist_mod.Worklist:
    return worklist_mod.Worklist(config.database, password=config.database_password)


class Heartbeat:
    """Tells the database every :data:`~.worklist.HEARTBEAT_S` that the node still works on the job (its own
    connection: SQLite connections stay in their thread)."""

    def __init__(self, config: NodeConfig, job: worklist_mod.Job):
        self.config, self.job = config, job
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _beat(self) -> None:
        worklist = None
        while not self._stop.wait(worklist_mod.HEARTBEAT_S):
            try:
                worklist = worklist or open_worklist(self.config)
                worklist.heartbeat(self.job, self.config.node_name)
            except Exception as error:  # a missed heartbeat only shortens the lease; never stop the analysis
                log.debug("heartbeat: %s", error)
                if worklist is not None:
                    worklist.close()
                worklist = None
        if worklist is not None:
            worklist.close()
