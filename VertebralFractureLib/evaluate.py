"""Segmentation accuracy against a reference label map: per-level Dice and the VerSe identification rate.

Identification (Sekuboyina et al., MedIA 2021): a reference vertebra is identified when the predicted vertebra with
the same label exists, its centroid is the closest of all predicted centroids to the reference centroid, and it
lies less than 20 mm away. The rate is over the reference vertebrae. Both maps are in VerSe ids and on the same grid
(the prediction is resampled onto the reference grid by nearest neighbour when they differ). Centroids are RAS mm.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from VertebralFractureLib.io import Volume, resample_labels_to
from VertebralFractureLib.io import labels as labels_mod
from VertebralFractureLib.results import json_text

ID_DISTANCE_MM = 20.0


def _centroids(volume: Volume, labels: list[int]) -> dict[int, np.ndarray]:
    if not labels:
        return {}
    centres = ndimage.center_of_mass(np.ones(volume.shape, dtype=np.uint8), volume.array, labels)
    return {label: volume.ijk_to_world(np.asarray(c, dtype=float))[0] for label, c in zip(labels, centres)}


def evaluate_labels(pred: Volume, ref: Volume) -> dict:
    """Per-level Dice, centroid distance and identification; summary means and the identification rate."""
    if not pred.same_grid(ref):
        pred = resample_labels_to(pred, ref)
    pred_array = pred.array.astype(np.int64)
    ref_array = ref.array.astype(np.int64)
    pred_labels = [int(v) for v in np.unique(pred_array) if v]
    ref_labels = [int(v) for v in np.unique(ref_array) if v]
    pred_centroids = _centroids(pred, pred_labels)
    ref_centroids = _centroids(ref, ref_labels)
    size = max(pred_labels + ref_labels + [0]) + 1
    # Confusion counts in one pass: intersection of every (ref, pred) pair.
    joint = np.bincount((ref_array * size + pred_array).ravel(), minlength=size * size).reshape(size, size)
    ref_counts = joint.sum(axis=1)
    pred_counts = joint.sum(axis=0)
    levels = []
    for label in labels_mod.neighbours_in_order(ref_labels):
        intersection = int(joint[label, label])
        dice = 2.0 * intersection / float(ref_counts[label] + pred_counts[label])
        entry = {"label": label, "level": labels_mod.level_name(label), "dice": round(dice, 4),
                 "ref_voxels": int(ref_counts[label]), "pred_voxels": int(pred_counts[label]),
                 "centroid_distance_mm": None, "identified": False, "closest_pred": None}
        if pred_centroids:
            distances = {p: float(np.linalg.norm(c - ref_centroids[label])) for p, c in pred_centroids.items()}
            closest = min(distances, key=distances.get)
            entry["closest_pred"] = labels_mod.level_name(closest)
            if label in distances:
                entry["centroid_distance_mm"] = round(distances[label], 2)
                entry["identified"] = bool(closest == label and distances[label] < ID_DISTANCE_MM)
        levels.append(entry)
    extra = [labels_mod.level_name(p) for p in labels_mod.neighbours_in_order(pred_labels) if p not in ref_labels]
    identified = sum(1 for e in levels if e["identified"])
    dices = [e["dice"] for e in levels]
    return {
        "reference_levels": [e["level"] for e in levels],
        "predicted_levels": [labels_mod.level_name(p) for p in labels_mod.neighbours_in_order(pred_labels)],
        "levels": levels,
        "mean_dice": round(float(np.mean(dices)), 4) if dices else None,
        "identification_rate": round(identified / len(levels), 4) if levels else None,
        "identified": identified,
        "reference_count": len(levels),
        "extra_predicted_levels": extra,
        "id_distance_mm": ID_DISTANCE_MM,
        "coordinate_system": "RAS",
    }


def format_report(result: dict) -> str:
    lines = [f"{'level':>5}  {'Dice':>6}  {'dist mm':>7}  identified"]
    for e in result["levels"]:
        distance = "-" if e["centroid_distance_mm"] is None else f"{e['centroid_distance_mm']:.1f}"
        lines.append(f"{e['level']:>5}  {e['dice']:6.3f}  {distance:>7}  "
                     f"{'yes' if e['identified'] else 'no (closest ' + str(e['closest_pred']) + ')'}")
    mean = "n/a" if result["mean_dice"] is None else f"{result['mean_dice']:.3f}"
    rate = "n/a" if result["identification_rate"] is None else f"{result['identification_rate']:.3f}"
    lines.append(f"mean Dice {mean}; identification rate {rate} ({result['identified']}/{result['reference_count']})")
    if result["extra_predicted_levels"]:
        lines.append("predicted but not in the reference: " + ", ".join(result["extra_predicted_levels"]))
    return "\n".join(lines)


def write_json(result: dict, destination: str | Path) -> None:
    from VertebralFractureLib.io import write_text_atomic

    write_text_atomic(destination, json_text(result) + "\n")
