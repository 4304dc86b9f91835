"""Seconds and peak memory of the deep backends per CT: the MONAI backend and TotalSegmentator, GPU and CPU.

For each CT input (the example CT as stored, 3 mm, and resamplings of it, 0.8 mm by default), each model resolution
(1.5 mm and 3 mm) and, on CUDA, mixed precision on and off, one run in a fresh process (so its peak memory is its
own) prints: the model grid and its sliding windows, load and segmentation seconds (wall time, CUDA synchronised),
the process's CPU seconds, peak resident memory (ru_maxrss) and, on CUDA, torch.cuda.max_memory_allocated.

* MONAI backend: the installed ``wholeBody_ct_segmentation`` bundle when it is in the model cache (``models download
  wholeBody_ct_segmentation``), else the same network (SegResNet, 105 classes, init_filters 32, blocks_down 1-2-2-4)
  with random weights in a bundle built here: time and memory do not depend on the weights' values.
* TotalSegmentator: when the package is installed and the weights of the model are in its weights folder (never
  downloaded by this script); its 3 mm model (``fast``) and its 1.5 mm model; nnU-Net sets mixed precision itself.
  ``--totalseg-weights random`` runs it instead on random weights of nnU-Net's default 3d_fullres network
  (PlainConvUNet, 6 stages of 32-320 features, 2 convolutions each) at the 3 mm model's patch size 112x112x128, in a
  weights folder of its own: the real plans come only inside the weights archives, so this is the shape nnU-Net
  plans for that patch, not a copy of TotalSegmentator's.

    python Testing/benchmarks/bench_monai.py                                  # everything, auto device
    python Testing/benchmarks/bench_monai.py --device cpu --inputs native --spacing 3
    python Testing/benchmarks/bench_monai.py --backends monai --amp on --json results.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPOSITORY), str(REPOSITORY / "Testing")]


def _default_ct() -> Path:
    root = Path(os.environ.get("VERTEBRAL_FRACTURE_DATA", REPOSITORY.parent / "shared" / "data"))
    return root / "totalsegmentator-example" / "example_ct.nii.gz"


def _build_random_bundle(folder: Path) -> Path:
    import torch
    from deep_builders import make_wholebody_bundle
    from monai.networks.nets import SegResNet

    torch.manual_seed(0)
    network = SegResNet(spatial_dims=3, in_channels=1, out_channels=105, init_filters=32, blocks_down=(1, 2, 2, 4),
                        blocks_up=(1, 1, 1), dropout_prob=0.2)
    state = network.state_dict()
    make_wholebody_bundle(folder, init_filters=32, roi_size=96, highres=True, state_dict=state,
                          blocks_down=(1, 2, 2, 4), checksums=False)
    torch.save(state, folder / "models" / "model_lowres.pt")  # the 3 mm weights file of the highres switch
    from VertebralFractureLib.segment import models

    models.write_checksums(folder)
    return folder


def monai_bundle(temporary: Path) -> tuple[Path, str]:
    """(bundle folder, description): the installed whole-body bundle, else a random-weights copy of its network."""
    from VertebralFractureLib.segment import models

    try:
        folder = models.find_model(None)
        version = json.loads((folder / "configs" / "metadata.json").read_text())["version"]
        return folder, f"installed {folder.name} {version}"
    except (models.ModelError, OSError, KeyError, ValueError):
        return _build_random_bundle(temporary / "wholeBody_ct_segmentation"), "random weights, same network"


def resampled_inputs(ct_path: Path, spacings: list[str], temporary: Path) -> list[tuple[str, Path]]:
    """("native", the CT) and ("0.8 mm", the CT resampled to 0.8 mm isotropic, trilinear) ..."""
    import nibabel as nib
    from nibabel.processing import resample_to_output

    inputs = []
    for spacing in spacings:
        if spacing == "native":
            inputs.append(("native", ct_path))
            continue
        image = nib.load(str(ct_path))
        resampled = resample_to_output(image, voxel_sizes=float(spacing), order=1, cval=-1024)
        path = temporary / f"ct_{spacing}mm.nii.gz"
        nib.save(nib.Nifti1Image(resampled.get_fdata(dtype="float32"), resampled.affine), str(path))
        inputs.append((f"{spacing} mm", path))
    return inputs


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its ended children (nnU-Net's worker processes): on a shared
    machine it shows the work apart from the waiting."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _memory(result: dict, torch, torch_device) -> dict:
    result["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2)
    if torch_device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(torch_device)
        result["gpu_max_allocated_gb"] = round(torch.cuda.max_memory_allocated(torch_device) / 1024**3, 2)
    return result


def run_monai(ct_path: Path, bundle: Path, spacing: float, device: str, sw_batch_size: int, amp: bool,
              all_channels: bool = False) -> dict:
    import numpy as np
    import torch

    from VertebralFractureLib import io
    from VertebralFractureLib.segment import monai_backend as mb

    torch_device = mb.resolve_device(device)
    ct = io.read_ct(ct_path)
    started = time.perf_counter()
    model = mb.load_model(bundle, highres=spacing < 2.0)
    load_s = time.perf_counter() - started
    image = mb.preprocess(model, ct)
    windows = mb.count_windows(tuple(image.shape[1:]), model.roi_size, model.overlap)
    if torch_device.type == "cuda":
        with torch.inference_mode():  # warm-up (cuDNN autotuning, CUDA context) outside the timed run
            model.network.to(torch_device).eval()(torch.zeros((1, 1, *model.roi_size), device=torch_device))
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started, cpu_started = time.perf_counter(), _cpu_seconds()
    output = mb.segment_with_model(model, ct, device=torch_device, amp=amp, sw_batch_size=sw_batch_size,
                                   spine_channels_only=not all_channels)
    if torch_device.type == "cuda":
        torch.cuda.synchronize()
    segment_s = time.perf_counter() - started
    result = {
        "backend": "monai", "ct": str(ct_path), "ct_shape": list(ct.shape), "model_spacing_mm": spacing,
        "model_grid": list(image.shape[1:]), "windows": windows, "roi": list(model.roi_size),
        "device": torch_device.type, "all_channels": all_channels, "amp": amp and torch_device.type == "cuda",
        "sw_batch_size": sw_batch_size, "threads": torch.get_num_threads(),
        "load_s": round(load_s, 2), "segment_s": round(segment_s, 2),
        "segment_cpu_s": round(_cpu_seconds() - cpu_started, 1),
        "labels_on_ct_grid": bool(output.labels.same_grid(ct)),
        "labels_present": [int(v) for v in np.unique(output.labels.array) if v][:5],
    }
    return _memory(result, torch, torch_device)


def run_totalsegmentator(ct_path: Path, spacing: float, device: str) -> dict:
    import numpy as np
    import torch

    from VertebralFractureLib import io
    from VertebralFractureLib.segment import get_backend
    from VertebralFractureLib.segment.monai_backend import resolve_device

    torch_device = resolve_device(device)
    ct = io.read_ct(ct_path)
    backend = get_backend("totalsegmentator", fast=spacing >= 2.0, allow_download=False)
    if torch_device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started, cpu_started = time.perf_counter(), _cpu_seconds()
    output = backend.segment(ct, device=torch_device.type)
    if torch_device.type == "cuda":
        torch.cuda.synchronize()
    result = {
        "backend": "totalsegmentator", "ct": str(ct_path), "ct_shape": list(ct.shape), "model_spacing_mm": spacing,
        "device": torch_device.type, "amp": "nnU-Net default", "threads": torch.get_num_threads(),
        "segment_s": round(time.perf_counter() - started, 2), "segment_cpu_s": round(_cpu_seconds() - cpu_started, 1),
        "labels_on_ct_grid": bool(output.labels.same_grid(ct)),
        "labels_present": [int(v) for v in np.unique(output.labels.array) if v][:5],
        "details": output.backend_details,
    }
    return _memory(result, torch, torch_device)


TOTALSEG_RANDOM_NETWORK = {"features": (32, 64, 128, 256, 320, 320), "patch": (112, 112, 128), "convs_per_stage": 2}
"""nnU-Net's default 3d_fullres PlainConvUNet for a 112x112x128 patch (the patch of TotalSegmentator's 3 mm model)."""


def build_random_totalseg(home: Path, spacings: list[float]) -> Path:
    """TOTALSEG_HOME_DIR with random weights of TOTALSEG_RANDOM_NETWORK for the data sets the runs use (the 6 mm crop
    model 298; 297 for 3 mm; 292, the vertebra part, for 1.5 mm, whose four other parts only need to exist)."""
    from deep_builders import _totalseg_datasets, make_totalseg_dataset, make_totalseg_home, nnunet_plans

    make_totalseg_home(home, datasets=())
    results = home / "nnunet" / "results"
    datasets = _totalseg_datasets()
    needed = {298} | ({297} if any(s >= 2.0 for s in spacings) else set()) \
        | ({292} if any(s < 2.0 for s in spacings) else set())
    for dataset in sorted(needed):
        folder, _trainer, spacing, _classes = datasets[dataset]
        make_totalseg_dataset(results, dataset, plans=nnunet_plans(folder, spacing, **TOTALSEG_RANDOM_NETWORK))
    if any(s < 2.0 for s in spacings):
        for dataset in (291, 293, 294, 295):
            (results / datasets[dataset][0]).mkdir(parents=True, exist_ok=True)
    return home


def totalsegmentator_ready(spacing: float) -> tuple[bool, str]:
    import importlib.util

    if importlib.util.find_spec("totalsegmentator") is None:
        return False, "TotalSegmentator is not installed"
    from VertebralFractureLib.segment import totalseg

    missing = totalseg.missing_weights(spacing >= 2.0)
    if missing:
        return False, f"its weights {', '.join(f'Dataset{d}' for d in missing)} are not in {totalseg.weights_dir()}"
    return True, ""


def _line(label: str, result: dict) -> str:
    gpu = (f"  GPU {result['gpu']} max allocated {result['gpu_max_allocated_gb']:.2f} GB" if "gpu" in result else "")
    if result["backend"] == "monai":
        grid = (f"grid {'x'.join(map(str, result['model_grid']))} {result['windows']:>3} windows  "
                f"load {result['load_s']:.1f} s  ")
        amp = " amp" if result["amp"] else ""
    else:
        grid, amp = "", ""
    return (f"{result['backend']:<16} {label:<8} CT {'x'.join(map(str, result['ct_shape'])):<12} model "
            f"{result['model_spacing_mm']:>3} mm  {grid}{result['device']}{amp} ({result['threads']} threads)  "
            f"segment {result['segment_s']:.1f} s (CPU time {result['segment_cpu_s']:.0f} s)  "
            f"peak RSS {result['peak_rss_gb']:.2f} GB{gpu}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ct", type=Path, default=_default_ct())
    parser.add_argument("--inputs", nargs="+", default=["native", "0.8"],
                        help="CT inputs: 'native' (as stored) and/or isotropic resamplings in mm (default native 0.8)")
    parser.add_argument("--spacing", type=float, nargs="+", default=[1.5, 3.0], help="model resolution: 1.5 and/or 3")
    parser.add_argument("--backends", nargs="+", default=["monai", "totalsegmentator"],
                        choices=["monai", "totalsegmentator"])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--amp", nargs="+", default=["on", "off"], choices=["on", "off"],
                        help="MONAI mixed precision on CUDA (ignored on the CPU, which always runs float32)")
    parser.add_argument("--sw-batch-size", type=int, default=1)
    parser.add_argument("--all-channels", action="store_true", help="blend all 105 channels (exact argmax)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds allowed per configuration")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--totalseg-weights", default="installed", choices=["installed", "random"],
                        help="TotalSegmentator's installed weights, or random weights of nnU-Net's default network "
                             "in a temporary weights folder (needs nnunetv2)")
    parser.add_argument("--child", choices=["monai", "totalsegmentator"], help=argparse.SUPPRESS)
    parser.add_argument("--bundle", type=Path, help=argparse.SUPPRESS)  # internal: child runs reuse the bundle
    args = parser.parse_args(argv)
    if args.child == "monai":
        print("RESULT " + json.dumps(run_monai(args.ct, args.bundle, args.spacing[0], args.device, args.sw_batch_size,
                                               args.amp[0] == "on", args.all_channels)))
        return 0
    if args.child == "totalsegmentator":
        print("RESULT " + json.dumps(run_totalsegmentator(args.ct, args.spacing[0], args.device)))
        return 0

    import torch

    cuda = args.device != "cpu" and torch.cuda.is_available()
    amps = args.amp if cuda else ["off"]
    results, failures = [], 0
    with tempfile.TemporaryDirectory(prefix="bench-deep-") as temporary:
        temporary = Path(temporary)
        inputs = resampled_inputs(args.ct, args.inputs, temporary)
        if "totalsegmentator" in args.backends and args.totalseg_weights == "random":
            os.environ["TOTALSEG_HOME_DIR"] = str(build_random_totalseg(temporary / "totalseg", args.spacing))
            os.environ.pop("TOTALSEG_WEIGHTS_PATH", None)
        bundle, weights = monai_bundle(temporary) if "monai" in args.backends else (None, "")
        print(f"device: {torch.cuda.get_device_name(0) if cuda else 'CPU'}; MONAI bundle: {weights}", flush=True)
        runs = []
        for label, path in inputs:
            for spacing in args.spacing:
                if "monai" in args.backends:
                    for amp in amps:
                        runs.append((label, ["--child", "monai", "--ct", str(path), "--bundle", str(bundle),
                                             "--spacing", str(spacing), "--amp", amp,
                                             "--sw-batch-size", str(args.sw_batch_size)]
                                     + (["--all-channels"] if args.all_channels else [])))
                if "totalsegmentator" in args.backends:
                    ready, why_not = totalsegmentator_ready(spacing)
                    if not ready:
                        print(f"totalsegmentator {label} model {spacing} mm: skipped ({why_not})", flush=True)
                        continue
                    runs.append((label, ["--child", "totalsegmentator", "--ct", str(path), "--spacing", str(spacing)]))
        for label, child in runs:
            command = [sys.executable, __file__, *child, "--device", "cuda" if cuda else "cpu"]
            try:
                completed = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
            except subprocess.TimeoutExpired:
                print(f"{' '.join(child[1:2])} {label}: longer than {args.timeout:.0f} s, stopped", flush=True)
                failures += 1
                continue
            lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
            if completed.returncode != 0 or not lines:
                print(f"{child[1]} {label}: failed\n{completed.stderr[-2000:]}", file=sys.stderr, flush=True)
                failures += 1
                continue
            result = json.loads(lines[-1][len("RESULT "):])
            result.update(input=label, weights=weights if result["backend"] == "monai" else "")
            results.append(result)
            print(_line(label, result), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
