"""MONAI backend: bundle loading in the wholeBody_ct_segmentation layout, checksums, weights-only loading,
output on the CT grid, CPU path. Tiny networks built by the tests; real CTs from the shared data."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("monai")

from deep_builders import WHOLEBODY_CHANNELS, make_wholebody_bundle
from deep_builders import constant_class_state as _constant_class_state

from VertebralFractureLib import io
from VertebralFractureLib.errors import InputError, VertebralFractureError
from VertebralFractureLib.io import labels
from VertebralFractureLib.segment import (
    get_backend,
    models,
)
from VertebralFractureLib.segment import monai_backend as mb

TPTBOX_CT = "tptbox/sub-ct_label-22_ct.nii.gz"
TPTBOX_MASK = "tptbox/sub-ct_seg-vert_label-22_msk.nii.gz"


def test_wholebody_channel_names_map_to_verse_ids():
    mapping = mb.channel_names_to_verse({str(i): name for i, name in enumerate(WHOLEBODY_CHANNELS)})
    # 24 vertebrae (18 L5 ... 41 C1, the TotalSegmentator v1 order) plus the sacrum (92); ribs and organs ignored.
    assert len(mapping) == 25
    assert mapping[18] == labels.label_from_level("L5") == 24
    assert mapping[22] == labels.label_from_level("L1") == 20
    assert mapping[23] == labels.label_from_level("T12") == 19
    assert mapping[41] == labels.label_from_level("C1") == 1
    assert mapping[92] == labels.SACRUM
    assert {k: v for k, v in mapping.items() if k != 92} == labels.CONVENTION_TO_VERSE[labels.TOTALSEG_V1]


def test_bundle_output_lies_on_the_ct_grid_with_verse_ids(tmp_path, shared_file):
    """Known weights (every voxel is channel 22 = vertebrae_L1) through the real bundle-loading code."""
    bundle = make_wholebody_bundle(tmp_path / "wholeBody_ct_segmentation", state_dict=_constant_class_state(22))
    ct = io.read_ct(shared_file(TPTBOX_CT))  # PIR, 1.5 mm: reoriented and resampled to the bundle's 3 mm RAS grid
    backend = get_backend("monai", model=str(bundle))
    steps = []
    output = backend.segment(ct, device="cpu", progress=lambda fraction, message: steps.append(fraction))
    assert output.labels.same_grid(ct)
    assert output.labels.array.dtype == np.int16
    # nearest-neighbour back onto the CT grid: every voxel inside the model grid is L1 (VerSe 20)
    values, counts = np.unique(output.labels.array, return_counts=True)
    assert values.tolist() == [20] or (values.tolist() == [0, 20] and counts[0] < 0.05 * counts.sum())
    assert output.backend == "monai" and output.full_vertebrae
    assert "3.00, 3.00, 3.00 mm" in output.level_evidence[0]  # highres false in the config -> 3 mm, model_lowres.pt
    assert steps[-1] == 1.0 and steps == sorted(steps)


def test_geometry_round_trip_through_the_model_grid(tmp_path, shared_file, monkeypatch):
    """The reference mask pushed through the backend's own preprocessing grid comes back onto the CT in place."""
    from monai.data import MetaTensor
    from monai.transforms import Orientation, Spacing

    bundle = make_wholebody_bundle(tmp_path / "bundle")
    ct = io.read_ct(shared_file(TPTBOX_CT))
    reference = io.read_label_map(shared_file(TPTBOX_MASK), "verse", reference=ct).volume
    verse_to_channel = {24 - i: 18 + i for i in range(5)}  # L5..L1 -> channels 18..22 of the bundle

    def fake_predict(model, image, device, **_):
        mask = MetaTensor(torch.as_tensor(reference.array[None].astype(np.float32)),
                          affine=torch.as_tensor(ct.ijk_to_ras))
        mask = Spacing(pixdim=(3.0, 3.0, 3.0), mode="nearest")(Orientation(axcodes="RAS")(mask))
        assert tuple(mask.shape) == tuple(image.shape) and np.allclose(mask.affine, image.affine)
        table = np.zeros(30, dtype=np.int64)
        for verse, channel in verse_to_channel.items():
            table[verse] = channel
        return table[mask[0].numpy().astype(int)]

    monkeypatch.setattr(mb, "predict_channels", fake_predict)
    output = get_backend("monai", model=str(bundle)).segment(ct, device="cpu")
    assert output.labels.same_grid(ct)
    for level in (21, 22, 23):
        truth, found = reference.array == level, output.labels.array == level
        dice = 2 * np.count_nonzero(truth & found) / (np.count_nonzero(truth) + np.count_nonzero(found))
        assert dice > 0.8, (level, dice)  # 1.5 -> 3 -> 1.5 mm nearest neighbour loses only the boundary


def test_random_bundle_runs_on_cpu_on_the_example_ct(tmp_path, shared_file):
    bundle = make_wholebody_bundle(tmp_path / "bundle", roi_size=64, seed=3)
    ct = io.read_ct(shared_file("totalsegmentator-example/example_ct.nii.gz"))
    crop = ct.with_array(ct.array[30:90, 20:80, 20:90].copy())
    crop.ijk_to_ras = ct.ijk_to_ras.copy()
    crop.ijk_to_ras[:3, 3] = ct.ijk_to_world([30, 20, 20])[0]
    output = get_backend("monai", model=str(bundle)).segment(crop, device="auto")
    assert output.labels.same_grid(crop)
    assert set(np.unique(output.labels.array)) <= set(range(0, 29))


def test_checksum_mismatch_is_refused_before_loading(tmp_path, shared_file, monkeypatch):
    bundle = make_wholebody_bundle(tmp_path / "bundle")
    weights = bundle / "models" / "model_lowres.pt"
    loads = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a) or {})
    (bundle / models.CHECKSUMS_FILE).write_text(f"{'0' * 64}  models/model_lowres.pt\n")
    with pytest.raises(InputError, match="SHA-256 .* does not match"):
        mb.load_model(bundle)
    (bundle / models.CHECKSUMS_FILE).unlink()
    with pytest.raises(models.ModelError, match="no SHA-256 is known"):
        mb.load_model(bundle)
    assert loads == []  # torch.load never ran on unverified weights
    monkeypatch.undo()
    model = mb.load_model(bundle, sha256=models.sha256_file(weights))  # a hash the user gives is accepted
    assert model.weights == weights


def test_weights_are_loaded_weights_only(tmp_path):
    """A checkpoint with pickled code is refused even when its checksum matches."""
    bundle = make_wholebody_bundle(tmp_path / "bundle")
    weights = bundle / "models" / "model_lowres.pt"
    state = torch.load(weights, weights_only=True)
    torch.save({"model": state, "options": argparse.Namespace(epochs=3)}, weights)  # a pickled object
    models.write_checksums(bundle)
    with pytest.raises(InputError, match="not a weights-only PyTorch checkpoint"):
        mb.load_model(bundle)
    torch.save({"model": state, "epoch": 3}, weights)  # the wrapped form CheckpointLoader also accepts
    models.write_checksums(bundle)
    assert mb.load_model(bundle).kind == "monai-bundle"


def test_weights_that_do_not_fit_the_network(tmp_path):
    bundle = make_wholebody_bundle(tmp_path / "bundle")
    other = make_wholebody_bundle(tmp_path / "other", init_filters=16)
    (bundle / "models" / "model_lowres.pt").write_bytes((other / "models" / "model_lowres.pt").read_bytes())
    models.write_checksums(bundle)
    with pytest.raises(InputError, match="weights do not fit"):
        mb.load_model(bundle)


def test_device_cuda_without_gpu_says_so():
    if torch.cuda.is_available():
        assert mb.resolve_device("cuda").type == "cuda"
        return
    with pytest.raises(VertebralFractureError, match="sees no CUDA GPU"):
        mb.resolve_device("cuda")
    assert mb.resolve_device("auto").type == "cpu"
    with pytest.raises(VertebralFractureError, match="unknown device"):
        mb.resolve_device("tpu")


def test_apple_mps_is_offered_where_torch_has_it(monkeypatch):
    """mps (Apple silicon) is a device choice of the panel and the command line; auto takes it when PyTorch offers
    it and no CUDA GPU is there, and asking for it where PyTorch has none says so."""
    from VertebralFractureLib import segment
    from VertebralFractureLib.segment import totalseg

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert segment.torch_device_name("auto") == "cpu"
    with pytest.raises(VertebralFractureError, match="sees no Apple MPS device"):
        mb.resolve_device("mps")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert segment.torch_device_name("auto") == segment.torch_device_name("mps") == "mps"
    assert totalseg._device_name("auto") == "mps"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert segment.torch_device_name("auto") == "cuda" and totalseg._device_name("cuda") == "gpu"
    from VertebralFractureLib.cli import entry

    entry._load_command_modules()
    arguments = entry.build_parser().parse_args(["analyze", "--ct", "ct.nii.gz", "--out", "out", "--device", "mps"])
    assert arguments.device == "mps"


def test_missing_model_explains_how_to_get_one(tmp_path, monkeypatch):
    monkeypatch.setenv("VERTEBRAL_FRACTURE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(models.ModelError, match="models download wholeBody_ct_segmentation"):
        mb.load_model(None)
    with pytest.raises(InputError, match="is not a model folder"):
        mb.load_model(tmp_path)


def test_window_count_matches_monai():
    """The progress total equals the number of windows sliding_window_inference really visits."""
    from monai.inferers import sliding_window_inference

    calls = []
    shape, roi = (70, 50, 33), (32, 32, 32)
    sliding_window_inference(torch.zeros((1, 1, *shape)), roi, 1, lambda x: calls.append(1) or x, overlap=0.25)
    assert mb.count_windows(shape, roi, 0.25) == len(calls)


def test_spine_channel_blending_agrees_with_the_full_argmax(tmp_path, shared_file):
    """Blending only the vertebra channels (+ the best other logit) labels a subset of the full argmax's vertebra
    voxels, and differs only in a few overlap voxels."""
    bundle = make_wholebody_bundle(tmp_path / "bundle", roi_size=32, seed=5)
    model = mb.load_model(bundle)
    ct = io.read_ct(shared_file(TPTBOX_CT))
    image = mb.preprocess(model, ct)
    full = mb.predict_channels(model, image, torch.device("cpu"), spine_channels_only=False)
    reduced = mb.predict_channels(model, image, torch.device("cpu"), spine_channels_only=True)
    lookup = model.lookup()
    full_verse = lookup[np.clip(full, 0, len(lookup) - 1)] * (full < len(lookup))
    reduced_verse = lookup[np.clip(reduced, 0, len(lookup) - 1)] * (reduced < len(lookup))
    assert np.count_nonzero(full_verse) > 0  # random weights still claim some voxels for vertebra channels
    assert np.all((reduced_verse == 0) | (reduced_verse == full_verse))
    assert np.mean(reduced_verse == full_verse) > 0.9  # random weights: windows disagree far more than trained ones


def test_infer_command_writes_labels_on_the_ct_grid(tmp_path, shared_file, capsys):
    import nibabel as nib

    from VertebralFractureLib import cli

    bundle = make_wholebody_bundle(tmp_path / "bundle", state_dict=_constant_class_state(23))  # T12 everywhere
    ct_path = shared_file(TPTBOX_CT)
    out = tmp_path / "seg.nii.gz"
    assert cli.main(["infer", "--ct", str(ct_path), "--out", str(out), "--model", str(bundle), "--device", "cpu",
                     "-q"]) == 0
    assert "levels: T12" in capsys.readouterr().out
    written, ct = nib.load(out), nib.load(ct_path)
    assert written.shape == ct.shape and np.allclose(written.affine, ct.affine, atol=1e-4)
    assert set(np.unique(np.asarray(written.dataobj))) <= {0, 19}
    if not torch.cuda.is_available():
        assert cli.main(["infer", "--ct", str(ct_path), "--out", str(tmp_path / "x.nii.gz"), "--model", str(bundle),
                         "--device", "cuda", "-q"]) == 2
        assert "sees no CUDA GPU" in capsys.readouterr().err
        assert not (tmp_path / "x.nii.gz").exists()


def test_no_vertebra_in_the_output_is_reported(tmp_path, shared_file):
    from VertebralFractureLib.errors import NoVertebraeError

    bundle = make_wholebody_bundle(tmp_path / "bundle", state_dict=_constant_class_state(5))  # liver everywhere
    ct = io.read_ct(shared_file(TPTBOX_CT))
    with pytest.raises(NoVertebraeError, match="labelled no vertebra"):
        get_backend("monai", model=str(bundle)).segment(ct, device="cpu")
    output = mb.segment_with_model(mb.load_model(bundle), ct, device="cpu")
    assert output.warnings == ["no vertebrae found"] and not output.labels.array.any()


def test_highres_switch_selects_weights_and_spacing(tmp_path, shared_file):
    bundle = make_wholebody_bundle(tmp_path / "bundle")  # highres false: 3 mm, models/model_lowres.pt
    with pytest.raises(InputError, match="model.pt: does not exist"):
        mb.load_model(bundle, highres=True)
    (bundle / "models" / "model.pt").write_bytes((bundle / "models" / "model_lowres.pt").read_bytes())
    models.write_checksums(bundle)
    ct = io.read_ct(shared_file(TPTBOX_CT))
    high, low = mb.load_model(bundle, highres=True), mb.load_model(bundle)
    assert high.weights.name == "model.pt" and low.weights.name == "model_lowres.pt"
    assert np.allclose(np.linalg.norm(np.asarray(mb.preprocess(high, ct).affine)[:3, :3], axis=0), 1.5)
    assert np.allclose(np.linalg.norm(np.asarray(mb.preprocess(low, ct).affine)[:3, :3], axis=0), 3.0)


def test_analyze_with_the_monai_backend_and_a_chosen_model(tmp_path, shared_file, capsys):
    """analyze passes --model to the MONAI backend, then measures what the network labelled."""
    import json

    from VertebralFractureLib import cli

    bundle = make_wholebody_bundle(tmp_path / "bundle", state_dict=_constant_class_state(23))  # T12 everywhere
    out = tmp_path / "analysis"
    code = cli.main(["analyze", "--ct", str(shared_file(TPTBOX_CT)), "--out", str(out), "--backend", "monai",
                     "--model", str(bundle), "--device", "cpu", "-q"])
    assert code == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert results["segmentation_backend"].startswith("monai")
    assert [v["level"] for v in results["vertebrae"]] == ["T12"]
    assert (out / "segmentation.nii.gz").exists()
