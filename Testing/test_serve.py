"""The screening node against a real Orthanc (started here on 127.0.0.1 with authentication on) and a real
PostgreSQL (when one can be started): studies pushed in, SEG + SR + PDF back in the same study, the worklist, the
skips, a node killed mid-analysis, Orthanc restarted under it, a study sent twice.

Real data: the shared JPEG 2000 DICOM series (TotalSegmentator example; its quality control fails: "not assessed")
and the shared lumbar CT (TotalSegmentator example, written as a DICOM series: screened), copied with new UIDs.
The classical backend keeps every analysis to a few seconds.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import zlib
from pathlib import Path
from types import SimpleNamespace

import pydicom
import pytest
from pydicom.uid import generate_uid
from servers import OrthancServer, PostgresServer, orthanc_missing

from VertebralFractureLib.errors import InputError, VertebralFractureError
from VertebralFractureLib.serve import selection
from VertebralFractureLib.serve.config import load_config
from VertebralFractureLib.serve.node import Node
from VertebralFractureLib.serve.worklist import Worklist

REPOSITORY = Path(__file__).resolve().parents[1]
USER, PASSWORD = "screening-node", "orthanc-test-secret-7361"
WAIT_S = 120.0
"""Longest wait for the node to finish a study in these tests (each takes under 15 s on 2 cores)."""

pytestmark = pytest.mark.skipif(orthanc_missing() is not None, reason=orthanc_missing() or "")


# ---- data ------------------------------------------------------------------------------------------------------


def copy_with_new_uids(files, folder: Path, patient_id: str, **attributes) -> list[Path]:
    """The source files as a new study: new Study/Series/SOP Instance UIDs and Frame of Reference, a patient ID."""
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    written = []
    for index, path in enumerate(sorted(files)):
        dataset = pydicom.dcmread(path)
        sop = generate_uid()
        dataset.SOPInstanceUID = sop
        dataset.file_meta.MediaStorageSOPInstanceUID = sop
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study, series
        if "FrameOfReferenceUID" in dataset or dataset.get("Modality") == "CT":
            dataset.FrameOfReferenceUID = frame
        dataset.PatientID = patient_id
        for keyword, value in attributes.items():
            setattr(dataset, keyword, value)
        target = folder / f"{index:04d}.dcm"
        dataset.save_as(target)
        written.append(target)
    return written


@pytest.fixture()
def jpeg2000_study(shared_file, tmp_path) -> list[Path]:
    source = shared_file("totalsegmentator-example/example_ct_dicom")
    return copy_with_new_uids(source.iterdir(), tmp_path / "jpeg2000", "PAT-J2K", PatientName="Thoraco^Lumbar")


@pytest.fixture()
def lumbar_study(shared_file, tmp_path) -> list[Path]:
    """The lumbar CT as a DICOM series, plus a localizer (scout) series in the same study."""
    from dicom_series import write_ct_series

    from VertebralFractureLib import io

    ct = io.read_ct(shared_file("totalsegmentator-example/example_ct.nii.gz"))
    folder = write_ct_series(ct, tmp_path / "lumbar", attributes={
        "PatientID": "PAT-LUMBAR", "PatientName": "Lumbar^Spine", "StudyDate": "20240315",
        "SeriesDescription": "Abdomen 3.0"})
    files = sorted(folder.iterdir())
    scout = pydicom.dcmread(files[len(files) // 2])
    scout.SeriesInstanceUID = generate_uid()
    scout.SOPInstanceUID = scout.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    scout.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    scout.SeriesDescription = "Topogram"
    scout.SeriesNumber = 1
    scout.save_as(tmp_path / "scout.dcm")
    return files + [tmp_path / "scout.dcm"]


@pytest.fixture()
def mr_study(tmp_path) -> list[Path]:
    from pydicom.data import get_testdata_file

    return copy_with_new_uids([get_testdata_file("MR_small.dcm")], tmp_path / "mr", "PAT-MR")


def wait_until_stable(orthanc: OrthancServer, studies: int) -> None:
    """Until the server holds ``studies`` studies, all stable (it says so in its change feed then)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = orthanc.get("/studies?expand")
        if len(found) >= studies and all(study["IsStable"] for study in found):
            return
        time.sleep(0.2)
    pytest.fail("the studies sent never became stable")


def study_uid(files) -> str:
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)


# ---- servers ---------------------------------------------------------------------------------------------------


@pytest.fixture()
def orthanc(tmp_path):
    server = OrthancServer(tmp_path / "orthanc", users={USER: PASSWORD})
    try:
        server.start()
    except (RuntimeError, OSError) as error:
        pytest.skip(f"Orthanc cannot start here: {error}")
    yield server
    server.stop()


@pytest.fixture()
def node_config(orthanc, tmp_path) -> Path:
    """A configuration file as a deployment has it: credentials in the file, readable by its owner only."""
    work = tmp_path / "node-work"
    work.mkdir()
    path = tmp_path / "node.toml"
    path.write_text(f"""
[server]
url = "{orthanc.url}"
username = "{USER}"
password = "{PASSWORD}"

[worklist]
database = "sqlite:///{tmp_path / 'worklist.db'}"

[node]
name = "test-node"
backend = "classical"
poll_interval_s = 0.3
work_dir = "{work}"
""", encoding="utf-8")
    path.chmod(0o600)
    return path


def cli(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "VertebralFractureLib", *args], capture_output=True, text=True,
                          cwd=REPOSITORY, env=child_env(), timeout=600, **kwargs)


@pytest.fixture(autouse=True)
def _no_settings_from_the_developer(monkeypatch):
    """The node's settings come from each test's own file: none from the environment of whoever runs the tests."""
    for name in list(os.environ):
        if name.startswith(("VERTEBRAL_FRACTURE_ORTHANC", "VERTEBRAL_FRACTURE_WORKLIST", "VERTEBRAL_FRACTURE_PSEUDO")):
            monkeypatch.delenv(name)


def command(capsys, *args) -> SimpleNamespace:
    """The command line in this process (what the console script runs): exit code, stdout, stderr."""
    from VertebralFractureLib.cli.entry import main

    capsys.readouterr()
    try:
        code = main([str(a) for a in args])
    except SystemExit as exit:  # --help
        code = exit.code
    captured = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout=captured.out, stderr=captured.err)


def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPOSITORY), env.get("PYTHONPATH", "")])
    return {k: v for k, v in env.items() if not k.startswith("VERTEBRAL_FRACTURE_ORTHANC")}


def start_node(config: Path, log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "VertebralFractureLib", "serve", "--config", str(config)],
                                stdout=out, stderr=subprocess.STDOUT, cwd=REPOSITORY, env=child_env())


def database(config: Path) -> Path:
    return Path(re.search(r'database = "sqlite:///(.*)"', config.read_text()).group(1))


def worklist_row(db: Path, uid: str) -> dict | None:
    if not db.exists():
        return None
    with sqlite3.connect(db, timeout=30) as connection:
        connection.row_factory = sqlite3.Row
        try:
            row = connection.execute("SELECT * FROM vf_worklist WHERE study_uid = ?", (uid,)).fetchone()
        except sqlite3.OperationalError:
            return None
    return None if row is None else dict(row)


def job_state(db: Path) -> list[tuple]:
    if not db.exists():
        return []
    with sqlite3.connect(db, timeout=30) as connection:
        try:
            return connection.execute("SELECT orthanc_study, state, attempts FROM vf_jobs").fetchall()
        except sqlite3.OperationalError:
            return []


def wait_for(predicate, what: str, timeout_s: float = WAIT_S, node: subprocess.Popen | None = None, log=None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if node is not None and node.poll() is not None:
            pytest.fail(f"the node stopped ({node.returncode}) while waiting for {what}: "
                        f"{Path(log).read_text()[-2000:] if log else ''}")
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}" + (f": {Path(log).read_text()[-2000:]}" if log else ""))


def study_outputs(orthanc: OrthancServer, uid: str) -> dict[str, list[pydicom.Dataset]]:
    """Output modality (SEG, SR, DOC) -> the instances of that modality in the study (downloaded and parsed)."""
    import io

    import requests

    answer = requests.post(orthanc.url + "/tools/lookup", data=uid, auth=orthanc.auth, timeout=30).json()
    study_id = next(item["ID"] for item in answer if item["Type"] == "Study")
    outputs: dict[str, list] = {}
    for series_id in orthanc.get(f"/studies/{study_id}")["Series"]:
        series = orthanc.get(f"/series/{series_id}")
        modality = series["MainDicomTags"]["Modality"]
        if modality not in selection.OUTPUT_MODALITIES:
            continue
        for instance in series["Instances"]:
            outputs.setdefault(modality, []).append(
                pydicom.dcmread(io.BytesIO(orthanc.download(instance))))
    return outputs


def stable_to_sr_s(orthanc: OrthancServer, uid: str) -> float:
    """Seconds from the study's last StableStudy event (before its SR) to the SR's arrival, on Orthanc's clock."""
    import datetime

    import requests

    answer = requests.post(orthanc.url + "/tools/lookup", data=uid, auth=orthanc.auth, timeout=30).json()
    study_id = next(item["ID"] for item in answer if item["Type"] == "Study")

    def when(text: str) -> datetime.datetime:
        return datetime.datetime.strptime(text, "%Y%m%dT%H%M%S")

    received = None
    for series_id in orthanc.get(f"/studies/{study_id}")["Series"]:
        series = orthanc.get(f"/series/{series_id}")
        if series["MainDicomTags"]["Modality"] == "SR":
            received = when(requests.get(f"{orthanc.url}/instances/{series['Instances'][0]}/metadata/ReceptionDate",
                                         auth=orthanc.auth, timeout=30).text.strip())
    changes = orthanc.get("/changes?since=0&limit=10000")["Changes"]
    stable = [when(c["Date"]) for c in changes if c["ChangeType"] == "StableStudy" and c["ID"] == study_id
              and when(c["Date"]) <= received]
    return (received - max(stable)).total_seconds()


def pdf_text(document: bytes) -> str:
    """The text drawn in a PDF written by matplotlib (its content streams are deflated; strings sit in TJ arrays)."""
    text = []
    for match in re.finditer(rb"stream\r?\n(.*?)\r?\nendstream", document, re.S):
        try:
            content = zlib.decompress(match.group(1))
        except zlib.error:
            continue
        for block in re.findall(rb"BT(.*?)ET", content, re.S):
            pieces = re.findall(rb"\(((?:\\.|[^\\)])*)\)", block)
            text.append(b"".join(pieces).decode("latin-1"))
    return "\n".join(text)


def dataset_strings(dataset) -> str:
    values = []

    def visit(ds):
        for element in ds:
            if element.VR == "SQ":
                for item in element.value:
                    visit(item)
            elif element.VR not in ("OB", "OW", "OF", "UN") and element.value is not None:
                values.append(str(element.value))

    visit(dataset)
    return "\n".join(values)


def referenced_series(dataset) -> set[str]:
    found = set()
    for item in dataset.get("ReferencedSeriesSequence", []):
        found.add(str(item.SeriesInstanceUID))
    for study in dataset.get("CurrentRequestedProcedureEvidenceSequence", []):
        for item in study.ReferencedSeriesSequence:
            found.add(str(item.SeriesInstanceUID))
    return found


def one_of_each(outputs: dict) -> tuple:
    assert sorted(outputs) == ["DOC", "SEG", "SR"], f"outputs in the study: {sorted(outputs)}"
    assert [len(outputs[m]) for m in ("SEG", "SR", "DOC")] == [1, 1, 1], {m: len(v) for m, v in outputs.items()}
    return outputs["SEG"][0], outputs["SR"][0], outputs["DOC"][0]


def content_texts(dataset) -> list[str]:
    found = []

    def visit(items):
        for item in items:
            if "TextValue" in item:
                found.append(str(item.TextValue))
            if "ConceptCodeSequence" in item:
                found.append(str(item.ConceptCodeSequence[0].CodeMeaning))
            visit(item.get("ContentSequence", []))

    visit(dataset.get("ContentSequence", []))
    return found


# ---- end to end ------------------------------------------------------------------------------------------------


def test_node_screens_every_study_and_keeps_the_worklist(orthanc, node_config, lumbar_study, jpeg2000_study,
                                                         mr_study, tmp_path, capsys):
    for files in (lumbar_study, jpeg2000_study, mr_study):
        orthanc.upload_files(files)
    wait_until_stable(orthanc, 3)
    started = time.monotonic()
    result = cli("serve", "--config", str(node_config), "--once", "-v")
    assert result.returncode == 0, result.stderr[-3000:]
    elapsed = time.monotonic() - started
    assert PASSWORD not in result.stdout + result.stderr, "the password must never reach the logs"
    db = database(node_config)

    # The lumbar CT: screened; SEG, SR and PDF in its own study, referencing the source series; the scout skipped.
    lumbar_uid = study_uid(lumbar_study)
    source = pydicom.dcmread(lumbar_study[0], stop_before_pixels=True)
    seg, sr, pdf = one_of_each(study_outputs(orthanc, lumbar_uid))
    for output in (seg, sr, pdf):
        assert output.StudyInstanceUID == lumbar_uid and output.PatientID == "PAT-LUMBAR"
        assert output.Manufacturer == selection.OUTPUT_MANUFACTURER
    assert source.SeriesInstanceUID in referenced_series(seg)
    assert source.SeriesInstanceUID in referenced_series(sr) and seg.SeriesInstanceUID in referenced_series(sr)
    assert pdf.SOPClassUID == pydicom.uid.EncapsulatedPDFStorage and pdf.MIMETypeOfEncapsulatedDocument == \
        "application/pdf"
    document = bytes(pdf.EncapsulatedDocument)[:int(pdf.EncapsulatedDocumentLength)]
    assert document.startswith(b"%PDF") and document.rstrip().endswith(b"%%EOF")
    assert {str(item.ReferencedSOPInstanceUID) for item in pdf.SourceInstanceSequence} >= {source.SOPInstanceUID}
    segment_labels = [str(item.SegmentLabel) for item in seg.SegmentSequence]
    assert {"L1", "L2", "L3", "L4", "L5"} <= set(segment_labels)
    assert "Assessed" in content_texts(sr)
    row = worklist_row(db, lumbar_uid)
    assert row["status"] == "screened" and row["patient"] == "PAT-LUMBAR" and row["study_date"] == "20240315"
    assert row["worst_grade"] == 0 and row["fractured_levels"] == ""
    assert row["density_level"] == "L1" and 90 <= row["density_hu"] <= 135  # the osteopenia band
    assert row["recommendation"] == "refer" and row["qc_status"] == "passed" and row["reviewed"] == 0
    assert (row["seg_uid"], row["sr_uid"], row["pdf_uid"]) == (seg.SOPInstanceUID, sr.SOPInstanceUID,
                                                               pdf.SOPInstanceUID)
    assert row["series_uid"] == source.SeriesInstanceUID
    skipped = json.loads(row["skipped_series"])
    assert [(s["description"], "localizer" in s["reason"]) for s in skipped] == [("Topogram", True)]
    assert len(json.loads(row["links"])) == 3 and all(link.startswith(orthanc.url) for link in json.loads(row["links"]))

    # The JPEG 2000 series (a 40 mm slab: its bodies are cut, its level names unconfirmed): quality control withholds
    # the findings; the SR says "not assessed" and why.
    j2k_uid = study_uid(jpeg2000_study)
    seg2, sr2, pdf2 = one_of_each(study_outputs(orthanc, j2k_uid))
    texts = content_texts(sr2)
    withheld = ("Segmentation failed quality control", "Level names unconfirmed")
    assert "Not assessed" in texts
    assert any(t.startswith(withheld) for t in texts)
    row2 = worklist_row(db, j2k_uid)
    assert row2["status"] == "not assessed" and row2["qc_status"] in ("failed", "levels unconfirmed")
    assert row2["reason"].startswith(withheld) and row2["worst_grade"] is None
    assert "not assessed" in pdf_text(bytes(pdf2.EncapsulatedDocument)).lower()

    # The MR study: skipped with the reason, nothing sent into it.
    mr_uid = study_uid(mr_study)
    assert study_outputs(orthanc, mr_uid) == {}
    row3 = worklist_row(db, mr_uid)
    assert row3["status"] == "skipped" and "modality MR, not CT" in row3["reason"]

    # Nothing sent back names a path of the node's machine.
    work = str(tmp_path)
    for output in (seg, sr, pdf, seg2, sr2, pdf2):
        assert work not in dataset_strings(output)
    for output in (pdf, pdf2):
        text = pdf_text(bytes(output.EncapsulatedDocument))
        assert "Vertebral" in text and work not in text and "/tmp" not in text

    # The feed position is in the database, past the change that made the last study stable.
    with sqlite3.connect(db) as connection:
        position = connection.execute("SELECT last_change FROM vf_feed").fetchone()[0]
    changes = orthanc.get("/changes?since=0&limit=10000")["Changes"]
    stable = [c["Seq"] for c in changes if c["ChangeType"] == "StableStudy"]
    assert max(stable[:3]) <= position <= changes[-1]["Seq"]

    # Time from stable to the SR on the server: within 30 s plus the analysis (Orthanc's clock on both ends).
    print(f"node run (3 studies, one process): {elapsed:.1f} s; lumbar analysis {row['analysis_s']} s, "
          f"JPEG 2000 analysis {row2['analysis_s']} s")

    # The worklist command: list, filter, export, mark reviewed.
    def worklist(*args):
        return command(capsys, "worklist", "--config", node_config, *args)

    listing = worklist()
    assert listing.returncode == 0 and lumbar_uid in listing.stdout and mr_uid in listing.stdout
    assert PASSWORD not in listing.stdout + listing.stderr
    referred = worklist("--recommendation", "refer")
    assert lumbar_uid in referred.stdout and j2k_uid not in referred.stdout
    assert worklist("--fractured").stdout.count("\n") == 1  # the header only: no fracture in these studies
    exported = tmp_path / "worklist.csv"
    assert worklist("--status", "skipped", "--csv", exported).returncode == 0
    with open(exported, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["study_uid"], r["status"]) for r in rows] == [(mr_uid, "skipped")]
    marked = worklist("--mark-reviewed", lumbar_uid, "--reviewer", "dr-test", "--note", "DXA booked")
    assert marked.returncode == 0, marked.stderr
    assert worklist_row(db, lumbar_uid)["reviewed_by"] == "dr-test"
    unreviewed = worklist("--unreviewed")
    assert lumbar_uid not in unreviewed.stdout and j2k_uid in unreviewed.stdout
    unknown = worklist("--mark-reviewed", "1.2.3.4")
    assert unknown.returncode == 2 and unknown.stderr.startswith("error: ") and "Traceback" not in unknown.stderr


def test_kill_mid_analysis_restart_of_orthanc_and_a_study_sent_twice(orthanc, node_config, jpeg2000_study,
                                                                     mr_study, tmp_path):
    db = database(node_config)
    log = tmp_path / "node.log"
    work = Path(re.search(r'work_dir = "(.*)"', node_config.read_text()).group(1))
    uid = study_uid(jpeg2000_study)
    orthanc.upload_files(jpeg2000_study)
    node = start_node(node_config, log)
    try:
        # Killed while the pipeline runs (the series downloaded, its output folder made): nothing recorded yet.
        wait_for(lambda: any((p / "out").is_dir() for p in work.glob("*")), "the analysis to start", node=node,
                 log=log)
        node.send_signal(signal.SIGKILL)
        node.wait()
        assert worklist_row(db, uid) is None and study_outputs(orthanc, uid) == {}
        assert [state for _, state, _ in job_state(db)] == ["running"]

        # Restarted, it finishes the study: one row, one set of outputs.
        node = start_node(node_config, log)
        row = wait_for(lambda: worklist_row(db, uid), "the restarted node's row", node=node, log=log)
        assert row["analyses"] == 1 and row["status"] == "not assessed"
        seg, sr, pdf = one_of_each(study_outputs(orthanc, uid))

        # Orthanc restarted under the node: it waits, reconnects and takes the next study.
        orthanc.stop()
        time.sleep(2.0)
        assert node.poll() is None, "the node must survive the server going away"
        orthanc.start()
        orthanc.upload_files(mr_study)
        wait_for(lambda: worklist_row(db, study_uid(mr_study)), "the study sent after the restart", node=node,
                 log=log)

        # The study sent again: analysed once more, its outputs replaced (not added to).
        orthanc.upload_files(jpeg2000_study)
        wait_for(lambda: worklist_row(db, uid)["analyses"] == 2, "the re-sent study", node=node, log=log)
        seg2, sr2, pdf2 = one_of_each(study_outputs(orthanc, uid))
        assert seg2.SOPInstanceUID != seg.SOPInstanceUID and pdf2.SOPInstanceUID != pdf.SOPInstanceUID
        assert worklist_row(db, uid)["seg_uid"] == seg2.SOPInstanceUID

        # From stable to the SR on the server within 30 s plus the analysis (both times from Orthanc's clock).
        latency = stable_to_sr_s(orthanc, uid)
        analysis_s = worklist_row(db, uid)["analysis_s"]
        print(f"stable -> SR stored: {latency:.0f} s (analysis {analysis_s} s)")
        assert latency <= 30 + analysis_s + 1  # one second: Orthanc's timestamps are whole seconds

        # Its own outputs arriving make the study stable again: that must not start another analysis.
        wait_until_stable(orthanc, 2)
        wait_for(lambda: all(state == "done" for _, state, _ in job_state(db)), "the queue to drain", node=node,
                 log=log)
        assert worklist_row(db, uid)["analyses"] == 2
        one_of_each(study_outputs(orthanc, uid))
    finally:
        if node.poll() is None:
            node.send_signal(signal.SIGTERM)
            try:
                node.wait(timeout=60)
            except subprocess.TimeoutExpired:
                node.kill()
    assert node.returncode == 0, log.read_text()[-2000:]
    assert "reachable again" in log.read_text()
    assert PASSWORD not in log.read_text()


def test_a_crash_between_sending_and_recording_leaves_one_set_of_outputs(orthanc, node_config, jpeg2000_study,
                                                                           monkeypatch):
    """The window no kill can hit on purpose: outputs stored, the worklist not yet written. The next run deletes the
    orphaned outputs once its own are stored."""
    orthanc.upload_files(jpeg2000_study)
    wait_until_stable(orthanc, 1)
    config = load_config(node_config)
    real_finish = Worklist.finish_job

    def die(self, job, node, fingerprint, row):
        if row is not None:
            raise SystemExit("node killed")
        return real_finish(self, job, node, fingerprint, row)

    monkeypatch.setattr(Worklist, "finish_job", die)
    with pytest.raises(SystemExit):
        Node(config).run(once=True)
    uid = study_uid(jpeg2000_study)
    first = study_outputs(orthanc, uid)
    assert [len(first[m]) for m in ("SEG", "SR", "DOC")] == [1, 1, 1]

    monkeypatch.setattr(Worklist, "finish_job", real_finish)
    wait_until_stable(orthanc, 1)  # the outputs sent made the study "new" again for a moment
    node = Node(config)  # the same node name: it takes back the job it was running
    node.run(once=True)
    seg, sr, pdf = one_of_each(study_outputs(orthanc, uid))
    assert seg.SOPInstanceUID != first["SEG"][0].SOPInstanceUID
    row = node.worklist.rows(study_uid=uid)[0]
    assert row["analyses"] == 1 and row["seg_uid"] == seg.SOPInstanceUID


def test_refuses_a_server_without_authentication_unless_told(tmp_path, jpeg2000_study, capsys, monkeypatch):
    open_server = OrthancServer(tmp_path / "open", users=None)
    try:
        open_server.start()
    except (RuntimeError, OSError) as error:
        pytest.skip(f"Orthanc cannot start here: {error}")
    try:
        config = tmp_path / "open.toml"
        config.write_text(f'[server]\nurl = "{open_server.url}"\n[worklist]\ndatabase = "{tmp_path / "w.db"}"\n'
                          '[node]\nbackend = "classical"\npoll_interval_s = 0.3\n', encoding="utf-8")
        refused = command(capsys, "serve", "--config", config, "--once")
        assert refused.returncode == 2 and refused.stderr.startswith(f"error: {config}: no credentials")
        monkeypatch.setenv("VERTEBRAL_FRACTURE_ORTHANC_USERNAME", "someone")
        monkeypatch.setenv("VERTEBRAL_FRACTURE_ORTHANC_PASSWORD", "anything")
        refused = command(capsys, "serve", "--config", config, "--once")
        assert refused.returncode == 2 and "answers without authentication" in refused.stderr
        assert "anything" not in refused.stderr
        open_server.upload_files(jpeg2000_study)
        wait_until_stable(open_server, 1)
        allowed = command(capsys, "serve", "--config", config, "--once", "--allow-no-authentication")
        assert allowed.returncode == 0, allowed.stderr[-2000:]
        assert "1 studies analysed" in allowed.stdout
        assert worklist_row(tmp_path / "w.db", study_uid(jpeg2000_study))["status"] == "not assessed"
    finally:
        open_server.stop()


def test_wrong_credentials_and_secrets_on_the_command_line_are_refused(orthanc, node_config, tmp_path, capsys,
                                                                      monkeypatch):
    monkeypatch.setenv("VERTEBRAL_FRACTURE_ORTHANC_PASSWORD", "not-the-password")
    result = command(capsys, "serve", "--config", node_config, "--once")
    assert result.returncode == 2 and "refused the credentials" in result.stderr
    assert "not-the-password" not in result.stderr
    missing = command(capsys, "worklist", "--database", tmp_path / "none.db")
    assert missing.returncode == 2 and missing.stderr.startswith(f"error: {tmp_path / 'none.db'}: no worklist there")
    assert not (tmp_path / "none.db").exists()
    with_password = command(capsys, "worklist", "--database", "postgresql://vf:secret@127.0.0.1:1/x")
    assert with_password.returncode == 2 and "secret" not in with_password.stderr
    assert "--password" not in command(capsys, "serve", "--help").stdout
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\nurl = 1\n")
    result = command(capsys, "serve", "--config", bad)
    assert result.returncode == 2 and result.stderr.startswith(f"error: {bad}: is not valid TOML")


# ---- the database ----------------------------------------------------------------------------------------------


@pytest.fixture()
def postgres():
    reason = PostgresServer.missing()
    if reason:
        pytest.skip(reason)
    server = PostgresServer()
    try:
        server.start()
    except (RuntimeError, OSError, subprocess.SubprocessError) as error:
        server.stop()
        pytest.skip(f"PostgreSQL cannot start here: {error}")
    yield server
    server.stop()


def test_two_nodes_share_one_postgresql_worklist(orthanc, postgres, mr_study, jpeg2000_study, tmp_path, capsys,
                                                 monkeypatch):
    """Two nodes, one PostgreSQL worklist, one server: each study analysed by exactly one of them."""
    orthanc.upload_files(mr_study)
    orthanc.upload_files(jpeg2000_study)
    wait_until_stable(orthanc, 2)
    configs = []
    for name in ("node-a", "node-b"):
        path = tmp_path / f"{name}.toml"
        path.write_text(f'[server]\nurl = "{orthanc.url}"\nusername = "{USER}"\npassword = "{PASSWORD}"\n'
                        f'[worklist]\ndatabase = "{postgres.url}"\n'
                        f'[node]\nname = "{name}"\nbackend = "classical"\npoll_interval_s = 0.3\n', encoding="utf-8")
        path.chmod(0o600)
        configs.append(path)
    env = dict(child_env(), VERTEBRAL_FRACTURE_WORKLIST_PASSWORD=postgres.password)
    nodes = [subprocess.Popen([sys.executable, "-m", "VertebralFractureLib", "serve", "--config", str(c), "--once"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPOSITORY, env=env)
             for c in configs]
    try:
        logs = [n.communicate(timeout=300)[0] for n in nodes]
    finally:
        for n in nodes:
            if n.poll() is None:
                n.kill()
                n.wait()
    assert [n.returncode for n in nodes] == [0, 0], logs
    worklist = Worklist(postgres.url, password=postgres.password)
    try:
        rows = worklist.rows()
        assert sorted(r["study_uid"] for r in rows) == sorted([study_uid(mr_study), study_uid(jpeg2000_study)])
        assert all(r["analyses"] == 1 for r in rows)
        assert {r["status"] for r in rows} == {"skipped", "not assessed"}
        assert worklist.mark_reviewed(study_uid(mr_study), "dr-pg") == 1
        assert [r["study_uid"] for r in worklist.rows(reviewed=True)] == [study_uid(mr_study)]
    finally:
        worklist.close()
    one_of_each(study_outputs(orthanc, study_uid(jpeg2000_study)))
    monkeypatch.setenv("VERTEBRAL_FRACTURE_WORKLIST_PASSWORD", postgres.password)
    listing = command(capsys, "worklist", "--database", postgres.url, "--status", "skipped")
    assert listing.returncode == 0 and study_uid(mr_study) in listing.stdout
    assert study_uid(jpeg2000_study) not in listing.stdout


def test_feed_and_jobs_survive_in_the_database(tmp_path):
    """Queueing, claiming and finishing in SQLite: a study queued while it runs is queued again once it ends; a
    node's own running job comes back to it; another node waits for the lease."""
    worklist = Worklist(str(tmp_path / "w.db"))
    assert worklist.feed_position("s") is None
    assert worklist.set_feed_position("s", 0, None)
    with worklist.transaction():
        assert worklist.set_feed_position("s", 7, 0)
        worklist.queue_study("s", "study-1", 5, "20240101T000000")
    assert not worklist.set_feed_position("s", 9, 0), "a stale position must not overwrite a newer one"
    job = worklist.claim_job("s", "node-a")
    assert job.orthanc_study == "study-1" and job.attempts == 1
    assert worklist.claim_job("s", "node-b") is None, "another node waits for the lease"
    worklist.queue_study("s", "study-1", 8, "20240101T000010")  # changed while it runs
    again = Worklist(str(tmp_path / "w.db")).claim_job("s", "node-a")  # node-a restarted
    assert again.orthanc_study == "study-1" and again.attempts == 2
    assert worklist.finish_job(again, "node-a", "fp", {"server": "s", "study_uid": "1.2", "orthanc_study": "study-1",
                                                       "status": "screened"})
    assert worklist.job_state("s", "study-1")["state"] == "pending", "the change during the run is not lost"
    assert not worklist.finish_job(again, "node-b", "fp", None)
    job = worklist.claim_job("s", "node-b", lease_s=0)
    assert worklist.finish_job(job, "node-b", "fp", {"server": "s", "study_uid": "1.2", "orthanc_study": "study-1",
                                                     "status": "screened"})
    assert [r["analyses"] for r in worklist.rows()] == [2]


# ---- series selection ------------------------------------------------------------------------------------------


def series(**fields) -> selection.SeriesInfo:
    values = dict(orthanc_id="o", series_uid="1.2.3", modality="CT", description="", number="2", manufacturer="X",
                  images=200, last_update="", image_type=["ORIGINAL", "PRIMARY", "AXIAL"], slice_thickness_mm=1.0,
                  orientation=[1, 0, 0, 0, 1, 0])
    values.update(fields)
    return selection.SeriesInfo(**values)


@pytest.mark.parametrize("fields, reason", [
    ({"modality": "MR"}, "modality MR, not CT"),
    ({"image_type": ["ORIGINAL", "PRIMARY", "LOCALIZER"], "images": 1}, "localizer"),
    ({"orientation": [0, 1, 0, 0, 0, -1]}, "not axial (image plane 90 degrees off axial"),
    ({"orientation": [1, 0, 0, 0, 0.966, -0.259]}, "not axial (image plane 15 degrees"),
    ({"slice_thickness_mm": 5.0}, "slices 5 mm thick (at most 3 mm)"),
    ({"images": 12, "slice_thickness_mm": 2.0}, "12 image(s) covering about 24 mm"),
    ({"sop_class_uid": "1.2.840.10008.5.1.4.1.1.2.1"}, "not single-frame CT"),
])
def test_series_unfit_for_analysis_say_why(fields, reason):
    assert reason in (selection.unfit_reason(series(**fields)) or "")


def test_series_choice_prefers_thin_slices_and_never_takes_its_own_outputs():
    thin = series(orthanc_id="thin", series_uid="1.1", slice_thickness_mm=1.0, images=300, number="3")
    thick = series(orthanc_id="thick", series_uid="1.2", slice_thickness_mm=3.0, images=100, number="2")
    tilted = series(orthanc_id="tilt", series_uid="1.3", orientation=[1, 0, 0, 0, 0.985, -0.174])  # 10 degrees
    output = series(orthanc_id="out", modality="SEG", manufacturer=selection.OUTPUT_MANUFACTURER)
    choice = selection.choose_series([thick, output, thin])
    assert choice.chosen is thin and [s.orthanc_id for s in choice.outputs] == ["out"]
    assert [(s.orthanc_id, "analysed instead" in r) for s, r in choice.skipped] == [("thick", True)]
    assert selection.unfit_reason(tilted) is None
    nothing = selection.choose_series([series(modality="MR"), output])
    assert nothing.chosen is None and nothing.reason.startswith("no axial CT series fit for analysis: series 2")


# ---- settings --------------------------------------------------------------------------------------------------


def test_settings_come_from_the_file_and_the_environment_never_shown(tmp_path, caplog):
    path = tmp_path / "node.toml"
    path.write_text('[server]\nurl = "http://127.0.0.1:8042"\nusername = "u"\npassword = "from-file"\n'
                    '[worklist]\npatient = "pseudonym"\npseudonym_key = "k1"\n', encoding="utf-8")
    path.chmod(0o644)
    with caplog.at_level("WARNING"):
        config = load_config(path, environ={"VERTEBRAL_FRACTURE_ORTHANC_PASSWORD": "from-env"})
    assert config.password == "from-env", "the environment overrides the file"
    assert "chmod 600" in caplog.text and "from-file" not in caplog.text
    assert "from-env" not in repr(config) and "k1" not in repr(config)
    # A keyed pseudonym: stable for one key, different for another, not the ID.
    label = config.patient_label("PAT-123")
    assert label.startswith("P-") and "PAT-123" not in label and label == config.patient_label("PAT-123")
    other = load_config(path, environ={"VERTEBRAL_FRACTURE_PSEUDONYM_KEY": "k2"})
    assert other.patient_label("PAT-123") != label
    path.write_text('[worklist]\npatient = "pseudonym"\n', encoding="utf-8")
    with pytest.raises(InputError, match="needs a pseudonym_key"):
        load_config(path, environ={})
    path.write_text('[orthanc]\nurl = "x"\n', encoding="utf-8")
    with pytest.raises(InputError, match=r"unknown section\(s\) orthanc"):
        load_config(path, environ={})
    path.write_text('[server]\nurl = "http://user:pw@127.0.0.1:8042"\nusername = "u"\n', encoding="utf-8")
    with pytest.raises(VertebralFractureError, match="must not hold credentials"):
        Node(load_config(path, environ={}))


def test_a_server_set_up_anew_is_read_from_its_start(orthanc, node_config, mr_study, caplog):
    """The worklist had read further than the server's change log reaches (a new Orthanc database): the node says
    so and reads the feed from its start instead of waiting for sequence numbers that never come."""
    config = load_config(node_config)
    worklist = Worklist(config.database)
    assert worklist.set_feed_position(config.server_name, 10**6, None)
    orthanc.upload_files(mr_study)
    wait_until_stable(orthanc, 1)
    with caplog.at_level("WARNING"):
        Node(config).run(once=True)
    assert "set up anew" in caplog.text
    assert worklist.rows(study_uid=study_uid(mr_study))[0]["status"] == "skipped"
    assert worklist.feed_position(config.server_name) == orthanc.get("/changes?last")["Last"]
