"""The automatic backend choice (`--backend auto`, the default): order, reasons, fall-through, and that whatever ran
is named in results.json. TotalSegmentator's case is in test_segment_totalseg.py (with a stand-in package)."""

from __future__ import annotations

import json

import pytest

from VertebralFractureLib import cli, io
from VertebralFractureLib.segment import (
    CLASSICAL_FALLBACK_WARNING,
    PANEL_BACKENDS,
    choose_backend,
    get_backend,
    models,
)

TPT_CT = "tptbox/sub-ct_label-22_ct.nii.gz"  # 1.5 mm crop around L3: the classical backend finds L2-L4 in seconds


def _install_bundle(checksums: bool = True):
    pytest.importorskip("monai")
    from deep_builders import constant_class_state, make_wholebody_bundle

    return make_wholebody_bundle(models.models_dir() / "wholeBody_ct_segmentation",
                                 state_dict=constant_class_state(23), checksums=checksums)


def test_without_deep_models_only_the_classical_backend_is_left():
    candidates, notes = choose_backend()
    assert [c.name for c in candidates] == ["classical"]
    assert "TotalSegmentator is not installed" in candidates[0].reason
    assert "no MONAI model is installed" in candidates[0].reason
    assert len(notes) == 2


def test_an_installed_bundle_is_chosen_only_with_recorded_checksums():
    bundle = _install_bundle(checksums=False)
    candidates, notes = choose_backend()
    assert [c.name for c in candidates] == ["classical"] and "no recorded weight checksums" in notes[-1]
    models.write_checksums(bundle)
    candidates, _notes = choose_backend()
    assert [c.name for c in candidates] == ["monai", "classical"]
    assert candidates[0].reason == ("automatic choice: the MONAI model wholeBody_ct_segmentation is installed "
                                    "(weights checksums recorded)")


def test_classical_fallback_is_named_and_warned_in_results(shared_file, tmp_path, capsys, caplog):
    out = tmp_path / "out"
    assert cli.main(["analyze", "--ct", str(shared_file(TPT_CT)), "--out", str(out), "-q"]) == 0
    captured = capsys.readouterr()
    assert "segmentation: classical (automatic choice: no deep segmentation model is available" in captured.out
    results = json.loads((out / "results.json").read_text())
    assert results["segmentation_backend"] == "classical"
    assert results["segmentation_backend_reason"].startswith("automatic choice: no deep segmentation model is")
    fallback = [w for w in results["warnings"] if w.startswith(CLASSICAL_FALLBACK_WARNING)]
    assert len(fallback) == 1
    logged = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "classical" in r.getMessage()]
    # Said once on the console, on one line: in the printed summary, not logged a second time.
    console = captured.out + captured.err + "\n".join(logged)
    assert console.count(CLASSICAL_FALLBACK_WARNING) == 1 and f"warning: {fallback[0]}\n" in captured.out


def test_a_bundle_failing_verification_hands_over_to_the_classical_backend(shared_file):
    bundle = _install_bundle()
    with open(bundle / "models" / "model_lowres.pt", "ab") as handle:
        handle.write(b"tampered")
    ct = io.read_ct(shared_file(TPT_CT))
    output = get_backend("auto").segment(ct, device="cpu")
    assert output.backend == "classical"
    assert any(w.startswith("automatic backend choice: monai could not run") and "SHA-256" in w
               for w in output.warnings), output.warnings
    assert any(w.startswith(CLASSICAL_FALLBACK_WARNING) for w in output.warnings)


def test_an_explicit_backend_says_it_was_asked_for(shared_file):
    ct = io.read_ct(shared_file(TPT_CT))
    output = get_backend("classical").segment(ct)
    assert output.backend == "classical" and output.backend_reason == "asked for with --backend classical"
    assert not any(w.startswith(CLASSICAL_FALLBACK_WARNING) for w in output.warnings)


def test_the_panel_shows_which_backend_ran_from_results_json(shared_file):
    from VertebralFractureLib.slicer import process

    ct = io.read_ct(shared_file(TPT_CT))
    job = process.SegmentationJob(ct, backend="auto", device="cpu")
    try:
        assert job.runner.command[-4:] == ["--backend", "auto", "--device", "cpu"]
        assert job.backend_summary() == "segmentation backend not recorded"  # the child has not written it yet
        job.out_dir.mkdir(parents=True)
        results = {"segmentation_backend": "monai", "segmentation_backend_reason": "automatic choice: the MONAI "
                   "model wholeBody_ct_segmentation is installed (weights checksums recorded)",
                   "segmentation_backend_details": {"model": "Whole body CT segmentation", "version": "0.2.5"}}
        (job.out_dir / "results.json").write_text(json.dumps(results))
        assert job.backend_summary() == ("monai [Whole body CT segmentation 0.2.5] (automatic choice: the MONAI "
                                         "model wholeBody_ct_segmentation is installed (weights checksums recorded))")
    finally:
        job.cleanup()


def test_the_slicer_panel_offers_the_automatic_choice_by_default(shared_file):
    """The module's method choices map onto --backend values, "Automatic" (auto) first and the default."""
    import ast
    from pathlib import Path

    from VertebralFractureLib.segment import BACKEND_CHOICES
    from VertebralFractureLib.slicer import process

    source = (Path(__file__).resolve().parents[1] / "VertebralFracture" / "VertebralFracture.py").read_text()
    field = next(node for node in ast.walk(ast.parse(source)) if isinstance(node, ast.AnnAssign)
                 and getattr(node.target, "id", None) == "backend")
    choice = next(node for node in ast.walk(field.annotation)
                  if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Choice")
    choices = ast.literal_eval(choice.args[0])
    assert choices[0] == "Automatic" and ast.literal_eval(field.value) == "Automatic"
    assert [PANEL_BACKENDS.get(choice, choice) for choice in choices] == list(BACKEND_CHOICES)
    job = process.SegmentationJob(io.read_ct(shared_file(TPT_CT)), backend="Automatic")
    try:
        assert job.runner.command[job.runner.command.index("--backend") + 1] == "auto"
    finally:
        job.cleanup()


def test_front_ends_install_torch_for_monai_and_for_a_downloaded_model_only(monkeypatch):
    from VertebralFractureLib import segment

    assert segment.needs_torch("monai") and not segment.needs_torch("classical")
    assert not segment.needs_torch("Automatic")  # nothing downloaded: the automatic choice needs no torch
    _install_bundle()
    assert not segment.needs_torch("auto")  # torch and monai are importable here
    monkeypatch.setattr(segment, "_importable", lambda module: module not in ("torch", "monai"))
    assert segment.needs_torch("Automatic") and segment.needs_torch("auto")
