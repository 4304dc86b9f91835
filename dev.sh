#!/usr/bin/env bash
# Set-up and everyday commands. Each one creates .venv/ (Python 3.11) on first use.
#   bash dev.sh demo   the main job on the sample CT in ../shared/data, outputs in out/demo/
#   bash dev.sh test   run the whole test suite
#   bash dev.sh bench  print benchmark figures
#   bash dev.sh wheel-check  build the wheel, install it (not editable) in a clean venv, run the installed command
#   bash dev.sh slicer-check a venv with Slicer 5.10's bundled packages: the module's dependency install, then the
#                            child command, the batch script, the report and de-identification in it
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
        printf 'case,ct\nexample,%s\n' "$(realpath "$CT")" > "$work/cases.csv"
        (cd "$work/run" && "$work/venv/bin/vertebral-fracture" batch -i "$work/cases.csv" -o "$work/batch" \
            --no-report -q) || { echo "wheel check: batch failed" >&2; exit 1; }
        [ -s "$work/batch/example/results.json" ] || { echo "wheel check: batch wrote no results" >&2; exit 1; }
        echo "wheel check: the installed vertebral-fracture wrote every output"
        ;;
    slicer-check)
        # Slicer 5.10 bundles numpy 2.0.2, scipy 1.13.1, pydicom 2.4.4 and SimpleITK, and no matplotlib, nibabel or
        # highdicom. The module's dependency logic must install what is missing without replacing those builds, and
        # everything the module runs must then work with them.
        work=$(mktemp -d "${TMPDIR:-/tmp}/vf-slicer-XXXXXX")
        trap 'rm -rf "$work"' EXIT
        "$PYTHON" -m venv "$work/venv"
        py="$work/venv/bin/python"
        "$py" -m pip install --quiet numpy==2.0.2 scipy==1.13.1 pydicom==2.4.4 SimpleITK==2.4.1
        export PYTHONPATH="$PWD"
        "$py" - <<'PY'
import subprocess
import sys

from VertebralFractureLib import dependencies

bundled = ("numpy", "scipy", "pydicom", "SimpleITK")
before = {name: dependencies.installed_version(name) for name in bundled}
missing = dependencies.missing("core", skip=dependencies.SLICER_PROVIDED)
assert {"matplotlib>=3.8", "nibabel>=5.0"} <= set(missing), missing


def pip_install(arguments):  # what slicer.util.pip_install does with a list
    subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet", *arguments])


assert dependencies.ensure("core", pip_install, confirm=lambda needed: True), dependencies.missing("core")
after = {name: dependencies.installed_version(name) for name in bundled}
assert after == before, f"Slicer's own packages changed: {before} -> {after}"
print(f"installed {', '.join(missing)}; kept {after}")
PY
        EXAMPLE="$DATA/totalsegmentator-example"
        cli=("$py" -m VertebralFractureLib)
        # The module's child process, the report, the batch script and de-identification, under pydicom 2.4.
        "${cli[@]}" analyze -i "$EXAMPLE/example_ct.nii.gz" -o "$work/child" --no-report -q >/dev/null
        "${cli[@]}" report --seg "$work/child/segmentation.nii.gz" -i "$EXAMPLE/example_ct.nii.gz" -o "$work/child" \
            -q >/dev/null
        [ -s "$work/child/report.pdf" ] || { echo "slicer check: no report" >&2; exit 1; }
        printf 'case,ct\nexample,%s\n' "$(realpath "$EXAMPLE/example_ct.nii.gz")" > "$work/cases.csv"
        "$py" VertebralFracture/Batch/VertebralFractureBatch.py -i "$work/cases.csv" -o "$work/batch" --no-report -q
        "${cli[@]}" report --seg "$EXAMPLE/example_seg_dicom.nii.gz" -i "$EXAMPLE/example_ct_dicom" \
            -o "$work/deid" --deidentify --pseudonym CASE-1 -q >/dev/null
        ls "$work/deid/dicom/"*.dcm >/dev/null || { echo "slicer check: no de-identified series" >&2; exit 1; }
        echo "slicer check: dependency install, child command, report, batch and de-identification work"
        ;;
    *)
        echo "usage: bash dev.sh demo|test|bench|wheel-check|slicer-check" >&2
        exit 2
        ;;
esac
