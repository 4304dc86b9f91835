"""Seconds and peak memory of the MONAI backend per CT, with a full-size network, at 1.5 mm and 3 mm.

The network is the wholeBody_ct_segmentation bundle's SegResNet (105 classes, init_filters 32, blocks_down
1-2-2-4) with random weights, in a bundle folder built here in the bundle's layout: timing and memory do not
depend on the weights' values. Each configuration runs in a fresh process so its peak memory is its own.

    python Testing/benchmarks/bench_monai.py                        # example CT, 3 mm and 1.5 mm, auto device
    python Testing/benchmarks/bench_monai.py --device cpu --spacing 3
    python Testing/benchmarks/bench_monai.py --ct CT.nii.gz --json results.json

Printed per configuration: model grid size, number of sliding windows, load / preprocessing+inference+resampling
seconds, peak resident memory of the process (ru_maxrss) and, on CUDA, torch.cuda.max_memory_allocated.
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


def _build_bundle(folder: Path) -> Path:
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
    from VertebralFractureLib import models

    models.write_checksums(folder)
    return folder


def _cpu_seconds() -> float:
    """User + system CPU time of this process: on a shared machine it shows the work apart from the waiting."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_one(ct_path: Path, bundle: Path, spacing: float, device: str, sw_batch_size: int, amp: bool,
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
        torch.cuda.reset_peak_memory_stats()
        with torch.inference_mode():  # warm-up (cuDNN autotuning, CUDA context) outside the timed run
            model.network.to(torch_device).eval()(torch.zeros((1, 1, *model.roi_size), device=torch_device))
        torch.cuda.synchronize()
    started, cpu_started = time.perf_counter(), _cpu_seconds()
    output = mb.segment_with_model(model, ct, device=torch_device, amp=amp, sw_batch_size=sw_batch_size,
                                   spine_channels_only=not all_channels)
    if torch_device.type == "cuda":
        torch.cuda.synchronize()
    segment_s = time.perf_counter() - started
    cpu_s = _cpu_seconds() - cpu_started
    result = {
        "ct": str(ct_path), "ct_shape": list(ct.shape), "spacing_mm": spacing,
        "model_grid": list(image.shape[1:]), "windows": windows, "roi": list(model.roi_size),
        "device": torch_device.type, "all_channels": all_channels, "amp": amp and torch_device.type == "cuda",
        "sw_batch_size": sw_batch_size,
        "threads": torch.get_num_threads(), "load_s": round(load_s, 2), "segment_s": round(segment_s, 2),
        "segment_cpu_s": round(cpu_s, 1),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2),
        "labels_on_ct_grid": bool(output.labels.same_grid(ct)),
        "labels_present": [int(v) for v in np.unique(output.labels.array) if v][:5],
    }
    if torch_device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(torch_device)
        result["gpu_max_allocated_gb"] = round(torch.cuda.max_memory_allocated(torch_device) / 1024**3, 2)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ct", type=Path, default=_default_ct())
    parser.add_argument("--spacing", type=float, nargs="+", default=[3.0, 1.5], help="1.5 and/or 3 (mm)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--sw-batch-size", type=int, default=1)
    parser.add_argument("--no-amp", action="store_true")
    parser.add_argument("--all-channels", action="store_true", help="blend all 105 channels (exact argmax)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--bundle", type=Path, help=argparse.SUPPRESS)  # internal: child runs reuse the bundle
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        result = run_one(args.ct, args.bundle, args.spacing[0], args.device, args.sw_batch_size, not args.no_amp,
                         args.all_channels)
        print("RESULT " + json.dumps(result))
        return 0
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-monai-") as temporary:
        bundle = _build_bundle(Path(temporary) / "wholeBody_ct_segmentation")
        for spacing in args.spacing:
            command = [sys.executable, __file__, "--child", "--ct", str(args.ct), "--bundle", str(bundle),
                       "--spacing", str(spacing), "--device", args.device, "--sw-batch-size", str(args.sw_batch_size)]
            command += ["--no-amp"] if args.no_amp else []
            command += ["--all-channels"] if args.all_channels else []
            completed = subprocess.run(command, capture_output=True, text=True)
            lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
            if completed.returncode != 0 or not lines:
                print(f"{spacing} mm: failed\n{completed.stderr[-2000:]}", file=sys.stderr)
                return 1
            result = json.loads(lines[-1][len("RESULT "):])
            results.append(result)
            gpu = (f"  GPU {result['gpu']} max allocated {result['gpu_max_allocated_gb']:.2f} GB"
                   if "gpu" in result else "")
            print(f"{spacing:>4} mm  grid {'x'.join(map(str, result['model_grid']))}  {result['windows']:>3} windows  "
                  f"{result['device']}{' amp' if result['amp'] else ''} ({result['threads']} threads)  "
                  f"{'105' if result['all_channels'] else '26'} blended channels  "
                  f"load {result['load_s']:.1f} s  segment {result['segment_s']:.1f} s "
                  f"(CPU time {result['segment_cpu_s']:.0f} s)  "
                  f"peak RSS {result['peak_rss_gb']:.2f} GB{gpu}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
