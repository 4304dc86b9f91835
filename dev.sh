#!/usr/bin/env bash
# Set-up and everyday commands. Each one creates .venv/ (Python 3.11) on first use.
#   bash dev.sh demo   the main job on the sample CT in ../shared/data, outputs in out/demo/
#   bash dev.sh test   run the whole test suite
#   bash dev.sh bench  print benchmark figures
#   bash dev.sh wheel-check  build the wheel, install it (not editable) in a clean venv, run the installed command
#   bash dev.sh slicer-check [5.10] [5.12]  venvs with the packages Slicer 5.10 / 5.12 bundle, imported first: the
#                            module's dependency install, then the report with DICOM SEG + SR, de-identification, the
#                            child command and the batch script in them
#   bash dev.sh screenshots  the README's and the Extensions Index's screenshots, from the example CT
#   bash dev.sh deep-check   the tests marked deep (real TotalSegmentator / nnU-Net and MONAI bundle code, small
#                            weights) in .venv-deep, with TotalSegmentator (Testing/requirements-deep-lock.txt)
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
DATA=${VERTEBRAL_FRACTURE_DATA:-../shared/data}
# Absolute, so that commands run from another folder (the wheel check runs from an empty one) find it too.
[ -d "$DATA" ] && DATA=$(cd "$DATA" && pwd)

ensure_venv() {
    if [ ! -x .venv/bin/python ] || [ ! -f .venv/.installed ] || [ requirements-lock.txt -nt .venv/.installed ] \
        || [ pyproject.toml -nt .venv/.installed ]; then
        "$PYTHON" -m venv .venv
        .venv/bin/python -m pip install --quiet --upgrade pip
        # The lock pins torch==2.13.0 (CPU build); without the pin pip would pull several GB of CUDA packages.
        .venv/bin/python -m pip install --quiet -c requirements-lock.txt torch==2.13.0
        .venv/bin/python -m pip install --quiet -c requirements-lock.txt -e ".[all,test]"
        touch .venv/.installed
    fi
}

# The Python packages each Slicer release bundles that the module meets (Slicer's SuperBuild/External_python-*.cmake
# and External_SimpleITK.cmake at the release tag): they are in place, and imported, before the module installs
# anything. pydicom is imported at start-up by Slicer's DICOM plugins.
slicer_bundle() {
    case "$1" in
        5.10) echo "numpy==2.0.2 scipy==1.13.1 pydicom==2.4.4 SimpleITK==2.5.2 pillow==11.2.1 packaging==25.0" ;;
        5.12) echo "numpy==2.4.6 scipy==1.17.1 pydicom==3.0.2 SimpleITK==2.5.5 pillow==12.2.0 packaging==26.2" ;;
        *) echo "slicer check: unknown Slicer version '$1' (5.10 or 5.12)" >&2; return 2 ;;
    esac
}

SLICER_CHECK_FOLDERS=()

slicer_check() {
    local version=$1 bundle work py
    bundle=$(slicer_bundle "$version") || return 2
    work=$(mktemp -d "${TMPDIR:-/tmp}/vf-slicer-$version-XXXXXX")
    SLICER_CHECK_FOLDERS+=("$work")
    trap 'rm -rf "${SLICER_CHECK_FOLDERS[@]}"' EXIT
    export PYTHONPATH="$PWD"
    "$PYTHON" -m venv "$work/venv"
    py="$work/venv/bin/python"
    # shellcheck disable=SC2086
    "$py" -m pip install --quiet $bundle
    EXAMPLE="$DATA/totalsegmentator-example"
    SLICER_VERSION="$version" BUNDLE="$bundle" EXAMPLE="$EXAMPLE" WORK="$work" "$py" - <<'PY'
import os
import sys
from pathlib import Path

# As Slicer at start-up: its own packages are imported before any module installs anything.
import numpy  # noqa: F401
import pydicom
import pydicom.encaps  # noqa: F401 (Slicer's DICOM plugins import pydicom's submodules)
import scipy.ndimage  # noqa: F401
import SimpleITK  # noqa: F401

from VertebralFractureLib.slicer import dependencies

version, work, example = os.environ["SLICER_VERSION"], Path(os.environ["WORK"]), Path(os.environ["EXAMPLE"])
bundled = {spec.split("==")[0]: spec.split("==")[1] for spec in os.environ["BUNDLE"].split()}
assert pydicom.__version__ == bundled["pydicom"], pydicom.__version__
missing = dependencies.missing("core", skip=dependencies.SLICER_PROVIDED)
log = open(work / "pip.log", "w")
pip_install = dependencies.pip_installer(on_output=lambda line: print(line, file=log, flush=True))
for group in ("core", "dicom"):  # what the panel installs: Apply, then Write report with DICOM SEG + SR
    assert dependencies.ensure(group, pip_install, confirm=lambda needed: True), dependencies.missing(group)
kept = {name: dependencies.installed_version(name) for name in ("numpy", "scipy", "SimpleITK")}
assert kept == {name: bundled[name] for name in kept}, f"Slicer's own packages changed: {kept}"
stale = dependencies.stale_imports()
print(f"Slicer {version}: installed {', '.join(missing)} and the DICOM group; kept {kept}; "
      f"changed under the running process: {stale or 'nothing'}")
if version == "5.10":  # highdicom needs pydicom 3: Slicer's pydicom 2.4.4 was replaced on disk while in use
    assert [name for name, *_ in stale] == ["pydicom"], stale
    try:
        import highdicom  # noqa: F401
        print("  highdicom imports here despite the stale pydicom")
    except ImportError as error:
        print(f"  as in Slicer 5.10 after the install: import highdicom fails here ({error})")

# The report with DICOM SEG + SR, then the de-identified export, from this process (the panel's Write report).
from VertebralFractureLib import io  # noqa: E402
from VertebralFractureLib.morphometry import measure  # noqa: E402
from VertebralFractureLib.slicer import reporting  # noqa: E402

ct = io.read_ct(example / "example_ct_dicom")
labels = io.read_label_map(example / "example_seg_dicom.nii.gz", "totalseg_v2", reference=ct).volume
case = measure.measure_case(labels, ct)
for name, options in (("report", {}), ("deid", {"deidentify": True, "pseudonym": "CASE-1"})):
    _case, screening, written = reporting.report(case, ct, labels, work / name, dicom_files=ct.meta["dicom_files"],
                                                 dicom_out=True, **options)
    for key in ("report_pdf", "dicom_seg", "dicom_sr"):
        assert written[key].is_file(), (name, key)
assert written["dicom_series"].is_dir() and any(written["dicom_series"].iterdir())
where = "a fresh process" if reporting.needs_fresh_process() else "this process"
print(f"  report, DICOM SEG + SR and the de-identified export written by {where}")
PY
    local cli=("$py" -m VertebralFractureLib)
    # The module's child process (its front-end variable set, as the module sets it) and the batch script under the
    # same packages.
    VERTEBRAL_FRACTURE_FRONT_END=slicer "${cli[@]}" analyze -i "$EXAMPLE/example_ct.nii.gz" -o "$work/child" \
        --no-report -q >/dev/null || return 1
    [ -s "$work/child/segmentation.nii.gz" ] || { echo "slicer check: the child wrote no label map" >&2; return 1; }
    # What the child says about the deep backends names the panel's steps, no command for a terminal.
    "$py" - "$work/child/results.json" <<'PY' || return 1
import json, sys

results = json.load(open(sys.argv[1]))
warning = next(w for w in results["warnings"] if w.startswith("no deep segmentation model could run"))
assert "Vertebral Fracture panel" in warning and "pip" not in warning and "-m " not in warning, warning
print("  the child's hints name the panel's steps")
PY
    printf 'case,ct\nexample,%s\n' "$(realpath "$EXAMPLE/example_ct.nii.gz")" > "$work/cases.csv"
    "$py" VertebralFracture/Batch/VertebralFractureBatch.py -i "$work/cases.csv" -o "$work/batch" \
        --no-report -q || return 1
    echo "slicer check $version: dependency install, report with DICOM SEG + SR, de-identification, child command and batch work"
}

case "${1:-}" in
    demo)
        # The main job on the sample CT: find and name the vertebrae, measure and grade them, screen bone density,
        # write the clinical report. Then the same grading on a VerSe mask with known fractures.
        ensure_venv
        CT="$DATA/totalsegmentator-example/example_ct.nii.gz"
        .venv/bin/python -m VertebralFractureLib analyze -i "$CT" -o out/demo
        .venv/bin/python -m VertebralFractureLib measure \
            --seg "$DATA/verse19/sub-verse004_seg-vert_msk.nii.gz" -o out/demo-verse004
        echo "Outputs: out/demo/ (segmentation.nii.gz, results.json, vertebrae.csv, overview.png, report.html,"
        echo "report.pdf, screening.json) and out/demo-verse004/"
        ;;
    test)
        ensure_venv
        shift
        .venv/bin/python -m pytest "$@"
        ;;
    bench)
        # bash dev.sh bench [NAME ...]: the named scripts of Testing/benchmarks (default: all of them).
        ensure_venv
        shift
        names=("$@")
        [ ${#names[@]} -eq 0 ] && names=($(cd Testing/benchmarks && ls *.py | sed 's/\.py$//'))
        for name in "${names[@]}"; do
            echo "== $name"
            .venv/bin/python "Testing/benchmarks/$name.py" --data "$DATA"
        done
        ;;
    wheel-check)
        # The package as a user installs it: `pip install` of the built wheel (lower-bound dependencies, resolved
        # with the lock as constraints so CI gets the tested versions), in a venv that never saw the source tree.
        ensure_venv
        CT="$DATA/totalsegmentator-example/example_ct.nii.gz"
        work=$(mktemp -d "${TMPDIR:-/tmp}/vf-wheel-XXXXXX")
        trap 'rm -rf "$work"' EXIT
        .venv/bin/python -m pip wheel --quiet --no-deps -w "$work/dist" .
        "$PYTHON" -m venv "$work/venv"
        "$work/venv/bin/python" -m pip install --quiet -c requirements-lock.txt "$work"/dist/*.whl
        # Run from an empty folder so that nothing of the checkout can be imported by accident.
        mkdir "$work/run"
        (cd "$work/run" && time "$work/venv/bin/vertebral-fracture" analyze -i "$CT" -o "$work/out" -q)
        for name in segmentation.nii.gz results.json vertebrae.csv overview.png report.html report.pdf \
                    screening.json; do
            [ -s "$work/out/$name" ] || { echo "wheel check: $name missing" >&2; exit 1; }
        done
        "$work/venv/bin/python" -c "import json, sys; d = json.load(open(sys.argv[1])); \
assert d['levels_status'] and d['vertebrae'], d" "$work/out/results.json"
        # What it says about the deep backends is true here: PyTorch and MONAI are missing, so the hint installs the
        # [deep] extra's packages with this venv's Python before it names the download (which needs MONAI).
        "$work/venv/bin/python" - "$work/out/results.json" "$work/venv/bin/python" <<'PY'
import json, os, shlex, sys

results, python = json.load(open(sys.argv[1])), sys.argv[2]
reason = results["segmentation_backend_reason"]
assert "PyTorch and MONAI are not installed" in reason and "TotalSegmentator is not installed" in reason, reason
warning = next(w for w in results["warnings"] if w.startswith("no deep segmentation model could run"))
pip = next(part for part in warning.split("`") if "-m pip install" in part and "monai" in part)
words = shlex.split(pip)
assert words[3] == "install" and {word.split(">=")[0] for word in words[4:]} == {"torch", "monai"}, pip
assert os.path.samefile(shlex.split(pip)[0], python), (pip, python)
assert warning.index("monai>=") < warning.index("models download"), warning
print(f"wheel check: the hints name this venv's Python: {pip}")
PY
        printf 'case,ct\nexample,%s\n' "$(realpath "$CT")" > "$work/cases.csv"
        (cd "$work/run" && "$work/venv/bin/vertebral-fracture" batch -i "$work/cases.csv" -o "$work/batch" \
            --no-report -q) || { echo "wheel check: batch failed" >&2; exit 1; }
        [ -s "$work/batch/example/results.json" ] || { echo "wheel check: batch wrote no results" >&2; exit 1; }
        echo "wheel check: the installed vertebral-fracture wrote every output"
        ;;
    slicer-check)
        # bash dev.sh slicer-check [5.10] [5.12] (default: both): a venv holding the Python packages that Slicer
        # release bundles, imported first as Slicer does at start-up; then, in that same process, the module's
        # dependency install (core and DICOM groups, pip as a child as in the panel), the report with DICOM SEG + SR
        # and the de-identified export; then the module's child command and the batch script.
        shift
        versions=("$@")
        [ ${#versions[@]} -eq 0 ] && versions=(5.10 5.12)
        for version in "${versions[@]}"; do
            started_check=$SECONDS
            slicer_check "$version"
            echo "slicer check $version: $((SECONDS - started_check)) s"
        done
        ;;
    screenshots)
        # The screenshots the Extensions Index and the README show, and the Sample Data thumbnail: real outputs of
        # the analysis of the example CT.
        ensure_venv
        .venv/bin/python - "$DATA" "$PWD" <<'PY'
import base64
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from VertebralFractureLib import io

data, repository = Path(sys.argv[1]), Path(sys.argv[2])
ct_path = data / "totalsegmentator-example" / "example_ct.nii.gz"
screenshots = repository / "Screenshots"
screenshots.mkdir(exist_ok=True)
with tempfile.TemporaryDirectory() as work:
    subprocess.run([sys.executable, "-m", "VertebralFractureLib", "analyze", "-i", str(ct_path), "-o", work, "-q"],
                   check=True, stdout=subprocess.DEVNULL)
    shutil.copy(Path(work) / "overview.png", screenshots / "VertebralFracture-overview.png")
    html = (Path(work) / "report.html").read_text(encoding="utf-8")
    density = re.search(r'alt="Bone density against thresholds" src="data:image/png;base64,([^"]+)"', html).group(1)
    (screenshots / "VertebralFracture-report-density.png").write_bytes(base64.b64decode(density))
# Sample Data thumbnail: the mid-sagittal slice in a bone window (-250..750 HU), head up, 128 x 128.
ct = io.read_ct(ct_path)
assert ct.axis_codes() == "RAS", ct.axis_codes()
sagittal = np.asarray(ct.array[ct.shape[0] // 2], dtype=np.float32).T[::-1]  # rows superior first, columns A
window = np.clip((sagittal + 250.0) / 1000.0, 0.0, 1.0)
thumbnail = Image.fromarray((window * 255).astype(np.uint8)).resize((128, 128), Image.LANCZOS)
thumbnail.save(repository / "VertebralFracture" / "Resources" / "Icons" / "VertebralFractureExampleCT.png")
print("wrote Screenshots/*.png and VertebralFracture/Resources/Icons/VertebralFractureExampleCT.png")
PY
        ;;
    deep-check)
        # TotalSegmentator pins its own packages (nnU-Net, and a torchvision pip pairs with the CPU PyTorch), so it
        # gets a venv of its own: CPU PyTorch first (else pip pulls several GB of CUDA packages), then TotalSegmentator
        # and this package's requirements, all at the versions of the lock. The package itself comes from the source
        # tree (PYTHONPATH). About 2 min to build on 2 cores; kept until the lock changes.
        if [ ! -x .venv-deep/bin/python ] || [ ! -f .venv-deep/.installed ] \
            || [ Testing/requirements-deep-lock.txt -nt .venv-deep/.installed ]; then
            rm -rf .venv-deep
            "$PYTHON" -m venv .venv-deep
            lock=Testing/requirements-deep-lock.txt
            .venv-deep/bin/python -m pip install --quiet -c "$lock" torch==2.13.0
            .venv-deep/bin/python -m pip install --quiet -c "$lock" TotalSegmentator \
                -r VertebralFractureLib/requirements/core.txt -r VertebralFractureLib/requirements/deep.txt \
                -r VertebralFractureLib/requirements/dicom.txt pytest
            touch .venv-deep/.installed
        fi
        shift
        # VERTEBRAL_FRACTURE_DEEP_CHECK: a missing TotalSegmentator fails the tests here instead of skipping them.
        # Only the files with deep tests: this venv has no slicer-core, which other test files import.
        PYTHONPATH="$PWD" VERTEBRAL_FRACTURE_DATA="$DATA" VERTEBRAL_FRACTURE_DEEP_CHECK=1 \
            .venv-deep/bin/python -m pytest -m deep Testing/test_deep_real.py Testing/test_hints.py "$@"
        ;;
    *)
        echo "usage: bash dev.sh demo|test|bench|wheel-check|slicer-check [5.10] [5.12]|screenshots|deep-check" >&2
        exit 2
        ;;
esac
