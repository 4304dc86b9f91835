"""Inputs that would turn a result, refused through every command that reads them (real files altered here)."""

from __future__ import annotations

import time

import altered_inputs as altered
import pytest

from VertebralFractureLib import cli, io


@pytest.fixture(scope="module")
def root():
    from data_sources import data_root

    path = data_root()
    if not (path / altered.EXAMPLE_CT).exists():
        pytest.skip(f"shared data not found in {path}")
    return path


def refused(argv, capsys, out, file_name, *words):
    code = cli.main([*argv, "--out", str(out), "-q"])
    stderr = capsys.readouterr().err
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, stderr
    assert lines[0].startswith("error: ") and file_name in lines[0], lines[0]
    for word in words:
        assert word in lines[0], lines[0]
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("command", ["measure", "report", "analyze"])
def test_ct_not_in_hounsfield_units_refused_by_every_command(root, tmp_path, capsys, command):
    """The example CT + 1024 gave "L1 1124 HU: osteoporosis unlikely" through measure and report."""
    raw = altered.ct_plus_1024(root, tmp_path)
    refused([command, "--seg", str(root / altered.EXAMPLE_BODIES), "--ct", str(raw)], capsys, tmp_path / "out",
            "ct_plus_1024.nii.gz", "not a CT in HU")


def test_raw_values_with_padding_refused(root, tmp_path):
    """HU + 1024 with scanner padding (-2048 + 1024) still has values below -200: the dense share refuses it."""
    import nibabel as nib
    import numpy as np

    image = nib.load(str(root / altered.EXAMPLE_CT))
    array = np.asanyarray(image.dataobj).astype(np.int16) + 1024
    array[:, :, :3] = -1024
    path = tmp_path / "padded_raw.nii.gz"
    nib.save(nib.Nifti1Image(array, image.affine), str(path))
    with pytest.raises(io.NotCTError, match="% of its voxels above 600"):
        io.read_ct(path)


def test_real_cts_pass_the_hounsfield_check(root):
    for relative in (altered.EXAMPLE_CT, altered.TPTBOX_CT, "totalsegmentator-example/chest_crop/ct_cropped.nii.gz"):
        assert io.read_ct(root / relative).array.min() < -200


def test_flipped_bit_in_gzip_refused(root, tmp_path, capsys):
    """One bit flipped where the deflate stream still decodes: only the CRC-32 tells (it gave a false L4 finding)."""
    flipped = altered.flipped_bit(root / altered.EXAMPLE_BODIES, tmp_path)
    refused(["measure", "--seg", str(flipped), "--ct", str(root / altered.EXAMPLE_CT)], capsys, tmp_path / "out",
            "flipped_bit.nii.gz", "corrupt")
    flipped_ct = altered.flipped_bit(root / altered.EXAMPLE_CT, tmp_path, "flipped_ct.nii.gz")
    with pytest.raises(io.InputError, match="CRC"):
        io.read_ct(flipped_ct)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".mha"])
def test_header_declaring_too_many_voxels_refused_before_reading(tmp_path, capsys, suffix, root):
    huge = altered.huge_header(tmp_path, suffix)
    assert huge.stat().st_size < 2000
    start = time.perf_counter()
    with pytest.raises(io.InputError, match="2000x2000x2000 voxels.*GiB"):
        io.read_ct(huge)
    assert time.perf_counter() - start < 1.0
    refused(["measure", "--seg", str(huge)], capsys, tmp_path / "out", huge.name, "GiB of memory")


def test_memory_estimate_uses_the_machine(monkeypatch, root):
    monkeypatch.setattr(io, "available_memory_bytes", lambda: 1 << 20)
    with pytest.raises(io.InputError, match="needs about"):
        io.read_ct(root / altered.EXAMPLE_CT)
    monkeypatch.setattr(io, "available_memory_bytes", lambda: None)
    assert io.read_ct(root / altered.EXAMPLE_CT).shape == (122, 101, 112)
