"""Training on a VerSe-layout folder built from the shared real CTs: loss falls, checkpoints, resume, and the
trained model segments through the MONAI backend. Tiny network, 3 mm, CPU."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("monai")

from VertebralFractureLib import cli, io, train
from VertebralFractureLib.errors import InputError
from VertebralFractureLib.segment import (
    get_backend,
    models,
)

TINY = ["--network", "unet", "--width", "8", "--spacing", "3", "--roi", "32", "--classes", "present",
        "--batch-size", "2", "--lr", "0.01", "--val-fraction", "0.5", "--steps-per-epoch", "4", "--device", "cpu"]


@pytest.fixture(scope="module")
def verse_folder(tmp_path_factory, shared_file):
    """Two real CTs with vertebra masks in VerSe layout (links to the shared files, nothing copied)."""
    root = tmp_path_factory.mktemp("verse")
    pairs = {
        "sub-example": ("totalsegmentator-example/example_ct.nii.gz",
                        "totalsegmentator-example/spine_report/totalseg_vertebrae_pp_refined.nii.gz"),
        "sub-tptbox": ("tptbox/sub-ct_label-22_ct.nii.gz", "tptbox/sub-ct_seg-vert_label-22_msk.nii.gz"),
    }
    for subject, (ct, mask) in pairs.items():
        (root / "rawdata" / subject).mkdir(parents=True)
        (root / "derivatives" / subject).mkdir(parents=True)
        (root / "rawdata" / subject / f"{subject}_ct.nii.gz").symlink_to(shared_file(ct))
        (root / "derivatives" / subject / f"{subject}_seg-vert_msk.nii.gz").symlink_to(shared_file(mask))
    return root


def test_cases_pair_by_prefix_and_refuse_other_layouts(verse_folder, tmp_path):
    cases = train.find_cases(verse_folder)
    assert [c["subject"] for c in cases] == ["sub-example", "sub-tptbox"]
    assert cases[0]["label"].endswith("sub-example_seg-vert_msk.nii.gz")
    assert train.present_classes(cases) == [0, 19, 20, 21, 22, 23, 24]  # T12-L5 bodies and L2-L4 vertebrae
    with pytest.raises(InputError, match="not a VerSe-layout folder"):
        train.find_cases(tmp_path)
    (tmp_path / "rawdata" / "sub-x").mkdir(parents=True)
    (tmp_path / "derivatives").mkdir()
    (tmp_path / "rawdata" / "sub-x" / "sub-x_ct.nii.gz").write_bytes(b"")
    with pytest.raises(InputError, match="holds no CT with a vertebra mask"):
        train.find_cases(tmp_path)


def test_train_checkpoint_resume_and_segment(verse_folder, tmp_path, shared_file, capsys):
    out = tmp_path / "model"
    assert cli.main(["train", "--data", str(verse_folder), "--out", str(out), "--epochs", "2", "-q", *TINY]) == 0
    assert "epochs done: 2" in capsys.readouterr().out
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[1]["loss"] < history[0]["loss"]  # the loss falls
    assert all(0.0 <= h["val_dice"] <= 1.0 for h in history)

    # checkpoints: weights + optimizer + epoch, loadable weights-only, hashes recorded
    latest = torch.load(out / train.LATEST, weights_only=True)
    assert latest["epoch"] == 2 and set(latest) >= {"model", "optimizer", "history", "config"}
    description = json.loads((out / "model.json").read_text())
    assert description["sha256"] == models.sha256_file(out / train.BEST)
    assert models.read_checksums(out)[train.LATEST] == models.sha256_file(out / train.LATEST)
    assert description["classes"] == [0, 19, 20, 21, 22, 23, 24]

    # a second run into the same folder must say --resume
    with pytest.raises(InputError, match="add --resume"):
        train.train(verse_folder, out, train.TrainOptions(epochs=3))

    # resume continues from the saved epoch with the saved optimizer state
    options = train.TrainOptions(epochs=3, network="unet", width=8, spacing_mm=3, roi=32, classes="present",
                                 batch_size=2, lr=0.01, val_fraction=0.5, steps_per_epoch=4)
    result = train.train(verse_folder, out, options, resume=True, device="cpu", show_progress=False)
    assert result["epoch"] == 3 and [h["epoch"] for h in result["history"]] == [1, 2, 3]
    assert result["history"][:2] == history  # the first two epochs are the saved ones, not re-run
    assert result["history"][2]["loss"] < history[0]["loss"]
    resumed = torch.load(out / train.LATEST, weights_only=True)
    steps = {int(state["step"]) for state in resumed["optimizer"]["state"].values()}
    assert steps == {12}  # 3 epochs x 4 steps: Adam's moments carried over the interruption
    assert train.train(verse_folder, out, options, resume=True, device="cpu", show_progress=False)["epoch"] == 3

    # the trained model segments through the MONAI backend, output on the CT grid with VerSe ids
    ct = io.read_ct(shared_file("tptbox/sub-ct_label-22_ct.nii.gz"))
    output = get_backend("monai", model=str(out)).segment(ct, device="cpu")
    assert output.labels.same_grid(ct)
    assert set(np.unique(output.labels.array)) <= {0, 19, 20, 21, 22, 23, 24}
    assert "project" in output.level_evidence[0]

    # a tampered checkpoint is not resumed from
    (out / train.LATEST).write_bytes((out / train.LATEST).read_bytes() + b"x")
    with pytest.raises(InputError, match="does not match"):
        train.train(verse_folder, out, train.TrainOptions(epochs=4), resume=True, device="cpu")
