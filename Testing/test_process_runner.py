"""The child-process runner, with real child Python processes: progress, errors, blocking path, cancel of a tree."""

from __future__ import annotations

import os
import stat
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from VertebralFractureLib import io
from VertebralFractureLib.slicer import process

REPOSITORY = Path(__file__).resolve().parents[1]


def _script(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def _alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (zombies are dead, only not yet reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    if status.exists():
        try:
            return "\nState:\tZ" not in status.read_text()
        except OSError:
            return False
    return True


def _wait_for(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_parse_progress_lines_of_the_cli():
    assert process.parse_progress("[   1.2 s]  42% separating vertebral bodies") == \
        process.ProgressEvent(0.42, "separating vertebral bodies")
    assert process.parse_progress("[  12.0 s] 100% writing outputs").fraction == 1.0
    assert process.parse_progress("WARNING something else") is None


def test_progress_reaches_the_callback_from_a_real_child(tmp_path):
    child = _script(tmp_path, "child.py", """
        import sys, time
        from VertebralFractureLib.cli.common import Progress
        progress = Progress()
        for step, message in enumerate(["reading", "segmenting", "measuring"]):
            progress(step / 3, message)
            time.sleep(0.05)
        print("result line on stdout")
    """)
    events, lines = [], []
    runner = process.run([sys.executable, str(child)], env=process.child_environment(),
                         on_progress=lambda f, m: events.append((round(f, 2), m)), on_output=lines.append)
    assert runner.state == process.FINISHED and runner.returncode == 0
    assert events == [(0.0, "reading"), (0.33, "segmenting"), (0.67, "measuring"), (1.0, "done")]
    assert "result line on stdout" in lines


def test_failure_gives_the_childs_one_line_error(tmp_path):
    missing = tmp_path / "missing.nii.gz"
    command = [sys.executable, "-m", "VertebralFractureLib", "measure", "--seg", str(missing), "--out",
               str(tmp_path / "out")]
    with pytest.raises(process.ProcessFailedError) as raised:
        process.run(command, env=process.child_environment(), cwd=str(tmp_path))
    assert str(raised.value) == f"{missing}: does not exist"


def test_real_measure_command_through_the_runner(shared_file, tmp_path):
    pytest.importorskip("VertebralFractureLib.outputs.files", reason="report.py (written output of measure) not merged")
    events = []
    command = [sys.executable, "-m", "VertebralFractureLib", "measure",
               "--seg", str(shared_file("totalsegmentator-example/spine_report/totalseg_vertebrae_pp_refined.nii.gz")),
               "--ct", str(shared_file("totalsegmentator-example/example_ct.nii.gz")), "--out", str(tmp_path / "out")]
    runner = process.run(command, env=process.child_environment(), on_progress=lambda f, m: events.append(m))
    assert runner.returncode == 0
    assert any(m.startswith("measuring L1") for m in events)
    assert (tmp_path / "out" / "results.json").exists()


def test_poll_does_not_block_and_cancel_kills_the_whole_tree(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    child = _script(tmp_path, "tree.py", f"""
        import signal, subprocess, sys, time
        grandchild = subprocess.Popen([sys.executable, "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"])
        open({str(pid_file)!r}, "w").write(str(grandchild.pid))
        print("[   0.1 s]  10% waiting", file=sys.stderr, flush=True)
        time.sleep(60)
    """)
    runner = process.ProcessRunner([sys.executable, str(child)], env=process.child_environment()).start()
    started = time.monotonic()
    assert runner.poll() == process.RUNNING
    assert time.monotonic() - started < 1.0
    assert _wait_for(lambda: pid_file.exists() and pid_file.read_text().strip())
    assert _wait_for(lambda: runner.poll() == process.RUNNING and runner.fraction == 0.10)
    grandchild = int(pid_file.read_text())
    assert _alive(grandchild)

    runner.cancel(grace_s=0.5)  # the grandchild ignores SIGTERM: it needs the SIGKILL after the grace time
    assert runner.state == process.CANCELLED
    assert not _alive(runner.pid)
    assert _wait_for(lambda: not _alive(grandchild), timeout=5.0)
    with pytest.raises(process.ProcessCancelledError):
        runner.raise_for_state()


def test_wait_with_timeout_cancels(tmp_path):
    child = _script(tmp_path, "slow.py", "import time\ntime.sleep(30)\n")
    runner = process.ProcessRunner([sys.executable, str(child)]).start()
    with pytest.raises(process.ProcessCancelledError, match="stopped after"):
        runner.wait(timeout=0.3)
    assert not _alive(runner.pid)


def test_segmentation_job_round_trip_through_a_child(shared_file, tmp_path):
    """The job's plumbing: the CT goes out as NIfTI, the child's label map comes back on the CT grid.

    The child stands in for ``analyze`` (an executable named like the Python the job starts) and copies a real
    label map; the real ``analyze`` command is exercised below when its backend is installed.
    """
    reference = shared_file("totalsegmentator-example/spine_report/totalseg_vertebrae_pp_refined.nii.gz")
    fake_python = _script(tmp_path, "python-stand-in", f"""\
        #!{sys.executable}
        import shutil, sys, time
        args = sys.argv[1:]
        assert args[:3] == ["-m", "VertebralFractureLib", "analyze"], args
        ct, out = args[args.index("--ct") + 1], args[args.index("--out") + 1]
        import nibabel
        assert nibabel.load(ct).shape == (122, 101, 112)
        print("[   0.0 s]  50% segmenting", file=sys.stderr, flush=True)
        import os
        os.makedirs(out, exist_ok=True)
        shutil.copy({str(reference)!r}, os.path.join(out, "segmentation.nii.gz"))
    """)
    fake_python.chmod(fake_python.stat().st_mode | stat.S_IEXEC)
    ct = io.read_ct(shared_file("totalsegmentator-example/example_ct.nii.gz"))
    events, lines = [], []
    job = process.SegmentationJob(ct, backend="classical", device="cpu", python=str(fake_python),
                                  on_progress=lambda f, m: events.append((f, m)), on_output=lines.append)
    assert job.runner.command[-4:] == ["--backend", "classical", "--device", "cpu"]
    assert job.runner.env["CUDA_VISIBLE_DEVICES"] == "-1"
    try:
        labels = job.start().wait(timeout=60)
    finally:
        job.cleanup()
    assert labels.same_grid(ct)
    assert sorted(int(v) for v in np.unique(labels.array) if v) == [19, 20, 21, 22, 23, 24]
    assert (0.5, "segmenting") in events
    assert "[   0.0 s]  50% segmenting" in lines  # the live log sees every line the child prints
    assert not job.work_dir.exists()


def test_real_analyze_command(shared_file):
    from VertebralFractureLib.cli import common, entry

    entry._load_command_modules()
    if "analyze" not in common._COMMANDS:
        pytest.skip("the analyze command (segmentation backends) is not merged into this checkout")
    ct = io.read_ct(shared_file("totalsegmentator-example/example_ct.nii.gz"))
    job = process.SegmentationJob(ct, device="cpu")
    try:
        labels = job.start().wait(timeout=300)
    finally:
        job.cleanup()
    assert labels.same_grid(ct)
    assert 20 in np.unique(labels.array)
