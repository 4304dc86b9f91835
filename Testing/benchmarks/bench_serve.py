"""Throughput of one screening node: studies per hour and the time from "stable" to the SR on the server.

    python Testing/benchmarks/bench_serve.py [--data DIR] [--studies 6] [--backend classical]

Starts Orthanc (authentication on, 127.0.0.1) in a temporary folder, sends ``--studies`` copies of the shared
lumbar CT (TotalSegmentator example, 112 slices of 3 mm, written as a DICOM series with new UIDs), runs
``vertebral-fracture serve`` beside it and prints per-study figures and the totals. Needs the Debian package
``orthanc``.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPOSITORY / "Testing"))

from servers import OrthancServer, orthanc_missing  # noqa: E402

USER, PASSWORD = "bench-node", "bench-password-5521"


def orthanc_time(text: str) -> datetime.datetime:
    return datetime.datetime.strptime(text, "%Y%m%dT%H%M%S")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPOSITORY.parent / "shared" / "data")
    parser.add_argument("--studies", type=int, default=6)
    parser.add_argument("--backend", default="classical")
    args = parser.parse_args()
    if orthanc_missing():
        print(f"skipped: {orthanc_missing()}")
        return 0
    import pydicom
    import requests
    from dicom_series import write_ct_series

    from VertebralFractureLib import io

    ct = io.read_ct(args.data / "totalsegmentator-example" / "example_ct.nii.gz")
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as scratch:
        scratch = Path(scratch)
        server = OrthancServer(scratch / "orthanc", users={USER: PASSWORD}).start()
        config = scratch / "node.toml"
        config.write_text(f'[server]\nurl = "{server.url}"\nusername = "{USER}"\npassword = "{PASSWORD}"\n'
                          f'[worklist]\ndatabase = "{scratch / "worklist.db"}"\n'
                          f'[node]\nbackend = "{args.backend}"\npoll_interval_s = 5\n', encoding="utf-8")
        config.chmod(0o600)
        node = subprocess.Popen([sys.executable, "-m", "VertebralFractureLib", "serve", "--config", str(config),
                                 "-q"], cwd=REPOSITORY)
        try:
            started = time.monotonic()
            uids = []
            for index in range(args.studies):
                folder = write_ct_series(ct, scratch / f"study{index}", attributes={"PatientID": f"BENCH{index}"})
                files = sorted(folder.iterdir())
                server.upload_files(files)
                uids.append(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
            from VertebralFractureLib.serve.worklist import Worklist

            worklist = Worklist(str(scratch / "worklist.db"))
            while len(worklist.rows()) < args.studies:
                if node.poll() is not None:
                    print(f"the node stopped ({node.returncode})")
                    return 1
                time.sleep(0.5)
            total = time.monotonic() - started
            rows = {r["study_uid"]: r for r in worklist.rows()}
            changes = server.get("/changes?since=0&limit=100000")["Changes"]
            latencies = []
            for uid in uids:
                study_id = next(i["ID"] for i in requests.post(server.url + "/tools/lookup", data=uid,
                                                               auth=server.auth, timeout=30).json())
                stable = min(orthanc_time(c["Date"]) for c in changes
                             if c["ChangeType"] == "StableStudy" and c["ID"] == study_id)
                sr_instance = next(s["Instances"][0] for s in
                                   (server.get(f"/series/{i}") for i in server.get(f"/studies/{study_id}")["Series"])
                                   if s["MainDicomTags"]["Modality"] == "SR")
                received = requests.get(f"{server.url}/instances/{sr_instance}/metadata/ReceptionDate",
                                        auth=server.auth, timeout=30).text
                latencies.append((orthanc_time(received) - stable).total_seconds())
            analysis = [rows[uid]["analysis_s"] for uid in uids]
            print(f"backend {args.backend}; {args.studies} copies of the lumbar example CT "
                  f"({ct.shape[0]}x{ct.shape[1]}x{ct.shape[2]} voxels, one DICOM image per slice)")
            print(f"per study, download + analysis + upload: median {statistics.median(analysis):.1f} s "
                  f"(min {min(analysis):.1f}, max {max(analysis):.1f})")
            print(f"stable -> SR on the server: first study {latencies[0]:.0f} s, median "
                  f"{statistics.median(latencies):.0f} s, last {latencies[-1]:.0f} s (queued behind the others)")
            print(f"all {args.studies} studies from the first upload: {total:.1f} s = "
                  f"{3600 * args.studies / total:.0f} studies/hour on this machine")
        finally:
            node.terminate()
            node.wait(timeout=120)
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
