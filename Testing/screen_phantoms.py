"""Synthetic spines with known trabecular attenuation, cortex, endplates, basivertebral vein and aorta.

Axes are RAS (i right, j anterior, k superior), 1 mm voxels unless told. Each body is an elliptic cylinder
(half-widths 18 mm right-left, 14 mm antero-posterior, 22 mm tall) with a 1 mm cortical shell and endplates at
``cortex_hu``, trabecular interior at the level's HU, and a low-attenuation channel entering the middle of the
posterior wall (the basivertebral vein).
"""

from __future__ import annotations

import numpy as np

from VertebralFractureLib.io import Volume
from VertebralFractureLib.io import labels as labels_mod

BODY_HALF_RL_MM = 18.0
BODY_HALF_AP_MM = 14.0
BODY_HEIGHT_MM = 22.0
DISC_MM = 8.0


FAT_HU = -100.0


def spine_phantom(levels_hu: dict[str, float], spacing: float = 1.0, cortex_hu: float = 900.0,
                  vein_hu: float = 0.0, soft_hu: float = 40.0, aorta_hu: float | None = None,
                  pad_mm: float = 12.0, cut_top_mm: float = 0.0, noise_sd: float = 0.0, seed: int = 0):
    """(ct, labels) Volumes. ``levels_hu`` maps level names, cranial first, to trabecular HU. ``aorta_hu`` adds a
    22 mm aorta anterior-left of the bodies. ``cut_top_mm`` removes that much of the top body (field of view)."""
    names = list(levels_hu)
    count = len(names)
    pitch = BODY_HEIGHT_MM + DISC_MM
    size_mm = np.array([2 * BODY_HALF_RL_MM + 2 * pad_mm + 40.0, 2 * BODY_HALF_AP_MM + 2 * pad_mm + 50.0,
                        count * pitch + 2 * pad_mm])
    shape = tuple(int(round(s / spacing)) for s in size_mm)
    coords = [(np.arange(n) + 0.5) * spacing for n in shape]
    x, y, z = np.meshgrid(*coords, indexing="ij")
    centre_x = pad_mm + BODY_HALF_RL_MM + 20.0
    centre_y = pad_mm + BODY_HALF_AP_MM
    ct = np.full(shape, soft_hu, dtype=np.float32)
    # Adipose tissue behind the spine (-100 HU): with the soft tissue, the reference the HU scale is checked against.
    ct[:, : int(round((pad_mm - 2.0) / spacing)), :] = FAT_HU
    labels = np.zeros(shape, dtype=np.int16)
    truth = {}
    for index, name in enumerate(names):
        top = size_mm[2] - pad_mm - index * pitch
        bottom = top - BODY_HEIGHT_MM
        centre_z = (top + bottom) / 2
        radial = ((x - centre_x) / BODY_HALF_RL_MM) ** 2 + ((y - centre_y) / BODY_HALF_AP_MM) ** 2
        body = (radial <= 1.0) & (z >= bottom) & (z <= top)
        inner = ((x - centre_x) / (BODY_HALF_RL_MM - 1)) ** 2 + ((y - centre_y) / (BODY_HALF_AP_MM - 1)) ** 2
        interior = (inner <= 1.0) & (z >= bottom + 1) & (z <= top - 1)
        ct[body] = cortex_hu
        ct[interior] = levels_hu[name]
        # Basivertebral vein: 6 mm wide channel from the posterior wall through the posterior quarter, mid-height.
        vein = interior & (np.abs(x - centre_x) <= 3) & (y <= centre_y - 0.5 * BODY_HALF_AP_MM) \
            & (np.abs(z - centre_z) <= 3)
        ct[vein] = vein_hu
        label = labels_mod.label_from_level(name)
        labels[body] = label
        truth[name] = {"label": label, "centre": (centre_x, centre_y, centre_z)}
    if aorta_hu is not None:
        aorta = ((x - (centre_x - BODY_HALF_RL_MM - 2)) ** 2 + (y - (centre_y + BODY_HALF_AP_MM + 14)) ** 2) <= 11**2
        ct[aorta] = aorta_hu
    if noise_sd:
        ct += np.random.default_rng(seed).normal(0, noise_sd, shape).astype(np.float32)
    if cut_top_mm:
        keep = int(round((size_mm[2] - pad_mm - cut_top_mm) / spacing))
        ct, labels = ct[:, :, :keep], labels[:, :, :keep]
    affine = np.diag([spacing, spacing, spacing, 1.0])
    # Centre the world origin on the spine so RAS coordinates look like a patient's.
    affine[:3, 3] = [-centre_x, -centre_y, 0.0]
    ct_volume = Volume(array=ct, ijk_to_ras=affine.copy(), path="phantom_ct")
    label_volume = Volume(array=labels, ijk_to_ras=affine.copy(), path="phantom_labels")
    return ct_volume, label_volume, truth
