"""The real deep-segmentation code end to end, with small weights in the layout of the real ones (marked ``deep``).

* TotalSegmentator: its Python API and nnU-Net's predictor, on the example CT, with a weights folder laid out as
  TotalSegmentator downloads it (data set folders named by its own table, dataset.json with its class names,
  plans.json, ``fold_0/checkpoint_final.pth`` of a tiny network built by nnU-Net's own trainer class). Needs the
  TotalSegmentator package: ``bash dev.sh deep-check`` installs it, pinned, into a separate venv.
* MONAI: the Model Zoo's own wholeBody_ct_segmentation v0.2.5 configuration (Testing/data/model-zoo) with random
  weights of the network it declares, installed in the model cache as ``models download`` installs it.

No test downloads anything: TotalSegmentator's config says not to send usage statistics, and the one download it
tries (missing weights) goes to a closed port on 127.0.0.1 through the proxy variables.
"""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest

from VertebralFractureLib import cli
from VertebralFractureLib.errors import VertebralFractureError
from VertebralFractureLib.io import labels
from VertebralFractureLib.segment import get_backend, totalseg

pytestmark = pytest.mark.deep

EXAMPLE_CT = "totalsegmentator-example/example_ct.nii.gz"
SPINE = set(totalseg.VERTEBRA_CLASSES)


def _needs_totalsegmentator():
    """Skip where TotalSegmentator is not installed, except in `bash dev.sh deep-check`, which installs it."""
    if os.environ.get("VERTEBRAL_FRACTURE_DEEP_CHECK"):
        import nnunetv2  # noqa: F401
        import totalsegmentator  # noqa: F401
        return
    pytest.importorskip("totalsegmentator", reason="TotalSegmentator is installed by `bash dev.sh deep-check`")
    pytest.importorskip("nnunetv2")


# ---------------------------------------------------------------------------------------------- label conventions


def test_our_class_map_is_totalsegmentators_for_every_spine_class():
    """labels.TOTALSEG_V2 (the numbering of a label map given with --labels totalseg_v2) and the names the backend
    reads from TotalSegmentator's output agree with totalsegmentator.map_to_binary for every spine class."""
    _needs_totalsegmentator()
    from totalsegmentator.map_to_binary import class_map, class_map_5_parts

    total = class_map["total"]
    spine = {label: name for label, name in total.items() if name in SPINE}
    assert set(spine.values()) == SPINE  # every class the backend asks for exists in this version
    table = labels.CONVENTION_TO_VERSE[labels.TOTALSEG_V2]
    for label, name in total.items():
        assert table.get(label) == totalseg.class_to_verse(name), (label, name)
    for label, name in spine.items():
        level = "S" if name in ("sacrum", "vertebrae_S1") else name.removeprefix("vertebrae_")
        assert labels.level_name(table[label]) == level, (label, name)
    # the 1.5 mm model's vertebra part (Dataset292) carries the same names
    assert set(class_map_5_parts["class_map_part_vertebrae"].values()) >= SPINE


def test_the_tested_version_is_the_installed_one():
    _needs_totalsegmentator()
    from importlib.metadata import version

    assert version("TotalSegmentator") == totalseg.TESTED_VERSION
    assert totalseg.weights_folders() == totalseg.WEIGHTS_FOLDERS  # our copy of its folder table is current


# ------------------------------------------------------------------------------------------ TotalSegmentator


@pytest.fixture()
def totalseg_home(tmp_path, monkeypatch):
    """TOTALSEG_HOME_DIR in the test's folder with TotalSegmentator's config.json (no usage statistics); its weights
    folder starts empty."""
    _needs_totalsegmentator()
    from deep_builders import make_totalseg_home

    home = make_totalseg_home(tmp_path / "totalseg", datasets=())
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(home))
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    for variable in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "https_proxy", "http_proxy", "all_proxy"):
        monkeypatch.setenv(variable, "http://127.0.0.1:9")  # closed port: a download attempt fails at once, here
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    return home


@pytest.fixture()
def spy_totalsegmentator(monkeypatch):
    """Records what TotalSegmentator's own API returned (the real function runs)."""
    from totalsegmentator import python_api

    returned = []
    real = python_api.totalsegmentator

    def spy(*args, **kwargs):
        returned.append((kwargs, real(*args, **kwargs)))
        return returned[-1][1]

    monkeypatch.setattr(python_api, "totalsegmentator", spy)
    return returned


@pytest.mark.parametrize("fast", [True, False], ids=["3 mm", "1.5 mm"])
def test_analyze_runs_totalsegmentator_and_nnunet(fast, totalseg_home, spy_totalsegmentator, shared_file, tmp_path,
                                                  capsys):
    """`analyze` (automatic choice) runs TotalSegmentator's API and nnU-Net's predictor on the example CT; the
    label map it writes is TotalSegmentator's output named with the class names TotalSegmentator wrote into it."""
    from deep_builders import make_totalseg_home
    from totalsegmentator.nifti_ext_header import load_multilabel_nifti

    make_totalseg_home(totalseg_home, totalseg.WEIGHTS_DATASETS[fast])
    out = tmp_path / "out"
    option = "--fast" if fast else "--no-fast"
    code = cli.main(["analyze", "--ct", str(shared_file(EXAMPLE_CT)), "--out", str(out), "--device", "cpu", option,
                     "--no-download", "--no-report", "-q"])
    assert code in (0, 5), capsys.readouterr().err  # 5: quality control rejects what random weights label
    results = json.loads((out / "results.json").read_text())
    assert results["segmentation_backend"] == "totalsegmentator"
    assert results["segmentation_backend_reason"] == "automatic choice: TotalSegmentator is installed"
    details = results["segmentation_backend_details"]
    assert details["version"] == totalseg.TESTED_VERSION and details["label_names"] == "from its output"
    assert details["model"].startswith("3 mm" if fast else "1.5 mm")
    (kwargs, raw), = spy_totalsegmentator
    assert kwargs["fast"] is fast and kwargs["task"] == "total" and set(kwargs["roi_subset"]) == SPINE
    _, names = load_multilabel_nifti(raw)
    assert set(names.values()) <= SPINE
    raw_array = np.asarray(raw.dataobj).astype(int)
    written = np.asarray(nib.load(out / "segmentation.nii.gz").dataobj).astype(int)
    assert written.shape == raw_array.shape  # the CT's grid, as TotalSegmentator returns it
    present = [int(v) for v in np.unique(raw_array) if v]
    assert present, "random weights labelled nothing"
    for label in present:
        name = names[label]
        level = "S" if name in ("sacrum", "vertebrae_S1") else name.removeprefix("vertebrae_")
        assert set(np.unique(written[raw_array == label])) == {labels.label_from_level(level)
                                                               if level != "S" else labels.SACRUM}, name
    assert not written[raw_array == 0].any()


def test_missing_weights_with_no_download_say_so_and_name_the_command(totalseg_home, shared_file):
    from deep_builders import make_totalseg_home

    from VertebralFractureLib.io import read_ct

    make_totalseg_home(totalseg_home, datasets=(298,))  # the 3 mm model itself is missing
    ct = read_ct(shared_file(EXAMPLE_CT))
    with pytest.raises(VertebralFractureError) as refused:
        get_backend("totalsegmentator", allow_download=False).segment(ct, device="cpu")
    message = str(refused.value)
    assert "weights of its 3 mm model (Dataset297)" in message and "--no-download forbids" in message
    assert "-m totalsegmentator.bin.totalseg_download_weights -t total_fast" in message


def test_weights_that_cannot_be_downloaded_say_so(totalseg_home, shared_file):
    """Offline (here: every download goes to a closed port on 127.0.0.1): TotalSegmentator's own downloader fails,
    and the message says the weights could not be downloaded, with the command that fetches them."""
    from VertebralFractureLib.io import read_ct

    ct = read_ct(shared_file(EXAMPLE_CT))
    with pytest.raises(VertebralFractureError) as failed:
        get_backend("totalsegmentator").segment(ct, device="cpu")
    message = str(failed.value)
    assert "(Dataset297, Dataset298) are not in" in message and "could not be downloaded" in message
    assert "totalseg_download_weights -t total_fast` when online" in message
    assert totalseg.missing_weights(True) == [297, 298]  # nothing half-downloaded looks installed


def test_automatic_choice_reason_names_the_missing_weights(totalseg_home, shared_file, tmp_path, capsys):
    """TotalSegmentator installed, its weights missing and --no-download: the classical backend runs, and its reason
    says why TotalSegmentator did not (not that it is missing)."""
    out = tmp_path / "out"
    code = cli.main(["analyze", "--ct", str(shared_file("tptbox/sub-ct_label-22_ct.nii.gz")), "--out", str(out),
                     "--no-download", "--no-report", "-q"])
    assert code in (0, 5), capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert results["segmentation_backend"] == "classical"
    reason = results["segmentation_backend_reason"]
    assert "TotalSegmentator is installed but the weights of its 1.5 mm model" in reason, reason
    assert "not installed" not in reason.split("MONAI")[0], reason


# ---------------------------------------------------------------------------------- MONAI Model Zoo bundle config


def test_bundle_label_indices_are_the_bundles_own():
    """Our channel -> VerSe map comes from the bundle's metadata.json: every vertebra and the sacrum, by its name."""
    pytest.importorskip("monai")
    from deep_builders import MODEL_ZOO_BUNDLE, WHOLEBODY_CHANNELS

    from VertebralFractureLib.segment import monai_backend

    metadata = json.loads((MODEL_ZOO_BUNDLE / "configs" / "metadata.json").read_text())
    channel_def = metadata["network_data_format"]["outputs"]["pred"]["channel_def"]
    assert metadata["version"] == "0.2.5"
    assert [channel_def[str(i)] for i in range(len(channel_def))] == WHOLEBODY_CHANNELS  # the builders' copy
    mapping = monai_backend.channel_names_to_verse(channel_def)
    expected = {int(i): labels.SACRUM if name == "sacrum" else labels.label_from_level(name.split("_")[1])
                for i, name in channel_def.items() if name.startswith("vertebrae_") or name == "sacrum"}
    assert mapping == expected and len(mapping) == 25


def test_analyze_runs_the_model_zoo_bundle_configuration(tmp_path, shared_file, monkeypatch, capsys):
    """The published inference.json (network, preprocessing, sliding-window inferer, checkpoint loader) through
    monai.bundle, with random weights of its network installed as `models download` installs them, picked by the
    automatic choice; a 96-voxel crop of the example CT keeps it to one sliding window at 3 mm."""
    pytest.importorskip("monai")
    from deep_builders import make_model_zoo_bundle

    from VertebralFractureLib.io import read_ct, write_nifti
    from VertebralFractureLib.segment import models

    monkeypatch.setenv("VERTEBRAL_FRACTURE_CACHE", str(tmp_path / "cache"))
    bundle = make_model_zoo_bundle(models.models_dir() / "wholeBody_ct_segmentation")
    ct = read_ct(shared_file(EXAMPLE_CT))
    crop = ct.with_array(ct.array[13:109, 5:101, 16:112].copy())
    crop.ijk_to_ras = ct.ijk_to_ras.copy()
    crop.ijk_to_ras[:3, 3] = ct.ijk_to_world([13, 5, 16])[0]
    write_nifti(crop, tmp_path / "crop.nii.gz")
    out = tmp_path / "out"
    code = cli.main(["analyze", "--ct", str(tmp_path / "crop.nii.gz"), "--out", str(out), "--lowres",
                     "--device", "cpu", "--no-report", "-q"])
    assert code in (0, 5), capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert results["segmentation_backend"] == "monai", results["segmentation_backend_reason"]
    details = results["segmentation_backend_details"]
    assert details["version"] == "0.2.5" and details["model"] == "Whole body CT segmentation"
    assert details["weights_sha256"] == models.sha256_file(bundle / "models" / "model_lowres.pt")
    assert details["spacing_mm"] == "3.00, 3.00, 3.00"
    written = np.asarray(nib.load(out / "segmentation.nii.gz").dataobj)
    assert written.shape == crop.shape
    assert set(np.unique(written)) <= {0, labels.SACRUM, *range(1, 25)}


def test_models_list_shows_totalsegmentator_and_its_weights(totalseg_home, capsys):
    from deep_builders import make_totalseg_home

    make_totalseg_home(totalseg_home, datasets=(297, 298))
    assert cli.main(["models", "list", "--json", "--hashes"]) == 0
    found = json.loads(capsys.readouterr().out)["totalsegmentator"]
    assert found["installed"] and found["version"] == totalseg.TESTED_VERSION
    assert found["models"] == {"3 mm": True, "1.5 mm": False}
    assert [d["dataset"] for d in found["datasets"]] == [297, 298]
    from VertebralFractureLib.segment import models

    for dataset in found["datasets"]:
        (checkpoint,) = dataset["checkpoints"]
        path = os.path.join(dataset["folder"], checkpoint["path"])
        assert checkpoint["sha256"] == models.sha256_file(path) and checkpoint["bytes"] == os.path.getsize(path)
    assert cli.main(["models", "list"]) == 0
    listing = capsys.readouterr().out
    assert f"TotalSegmentator {totalseg.TESTED_VERSION}: 3 mm model ready, 1.5 mm model weights missing" in listing
