"""The spine's centre curve on the classical backend's working grid, and positions along it: shared by the body
separation (``classical``) and the level naming (``levels``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class SpineGeometry:
    """The spine on the working grid: centre curve per axial slice, disc planes, body intervals."""

    z_indices: np.ndarray
    centre_xy: np.ndarray  # (n, 2) working-grid x, y per z index
    arclength_mm: np.ndarray
    tangent: np.ndarray  # (n, 3) unit tangent in mm space
    disc_u_mm: list[float] = field(default_factory=list)
    profile: np.ndarray | None = None
    sacral_u_mm: float | None = None
    sacrum_found: bool = False


def along_curve(geometry: SpineGeometry, voxels: np.ndarray, spacing_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """For voxels (N x 3 working indices) within the curve's z range: position along the curve (mm) and distance
    from it in the plane normal to it (mm), to first order around the voxel's own slice."""
    index = voxels[:, 2] - geometry.z_indices[0]
    centre = geometry.centre_xy[index]
    offset = np.zeros((len(voxels), 3))
    offset[:, :2] = (voxels[:, :2] - centre) * spacing_mm
    tangent = geometry.tangent[index]
    along = (offset * tangent).sum(axis=1)
    u = geometry.arclength_mm[index] + along
    radial = np.sqrt(np.maximum((offset**2).sum(axis=1) - along**2, 0.0))
    return u, radial
