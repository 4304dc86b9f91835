"""What the deep backends have on this machine, for `models list` and the Slicer panel: PyTorch and MONAI, the MONAI
models in the cache with the recorded SHA-256 of their weights, TotalSegmentator and the ``total`` task's weights."""

from __future__ import annotations

from pathlib import Path

from VertebralFractureLib.segment import environment, models, totalseg


def inventory(hashes: bool = False) -> dict:
    """What the deep backends have on this machine: PyTorch/MONAI versions, the MONAI models in the cache (with the
    recorded SHA-256 of their weights), TotalSegmentator and the ``total`` task's weights in its weights folder
    (SHA-256 of each checkpoint with ``hashes``: they are large, so only on request)."""
    monai_models = []
    for model in models.installed_models():
        monai_models.append({**model.to_dict(), "version": model.source.get("version", ""),
                             "weights_sha256": models.read_checksums(model.path)})
    totalsegmentator = {"installed": environment.importable("totalsegmentator"),
                        "version": environment.version("TotalSegmentator")}
    if totalsegmentator["installed"]:
        datasets = totalseg.installed_weights()
        if hashes:
            for dataset in datasets:
                for checkpoint in dataset["checkpoints"]:
                    checkpoint["sha256"] = models.sha256_file(Path(dataset["folder"]) / checkpoint["path"])
        totalsegmentator.update(
            weights_dir=str(totalseg.weights_dir()), datasets=datasets,
            models={totalseg.model_name(fast): not totalseg.missing_weights(fast) for fast in (True, False)})
    return {"models_dir": str(models.models_dir()), "torch": environment.version("torch"),
            "monai": environment.version("monai"), "monai_models": monai_models,
            "totalsegmentator": totalsegmentator}


def describe_inventory(found: dict) -> list[str]:
    """:func:`inventory` as lines for people (``models list`` and the Slicer panel)."""
    lines = [f"PyTorch {found['torch'] or 'not installed'}; MONAI {found['monai'] or 'not installed'}",
             f"MONAI models in {found['models_dir']}:" if found["monai_models"] else
             f"MONAI models: none in {found['models_dir']}"]
    for model in found["monai_models"]:
        lines.append(f"  {model['name']:<28} {model['kind']:<13} {model['version']:<8} "
                     f"{model['source'].get('url', 'local')}")
        lines += [f"    {digest}  {name}" for name, digest in model["weights_sha256"].items()]
    totalsegmentator = found["totalsegmentator"]
    if not totalsegmentator["installed"]:
        lines.append(f"TotalSegmentator: not installed ({environment.totalsegmentator_install_hint()})")
        return lines
    ready = ", ".join(f"{name} model {'ready' if complete else 'weights missing'}"
                      for name, complete in totalsegmentator["models"].items())
    lines.append(f"TotalSegmentator {totalsegmentator['version']}: {ready}; weights folder "
                 f"{totalsegmentator['weights_dir']}")
    for dataset in totalsegmentator["datasets"]:
        files = dataset["checkpoints"]
        size = sum(f["bytes"] for f in files) / 1e6
        lines.append(f"  Dataset{dataset['dataset']}  {len(files)} checkpoint(s), {size:.0f} MB")
        lines += [f"    {f['sha256']}  {f['path']}" for f in files if "sha256" in f]
    return lines
