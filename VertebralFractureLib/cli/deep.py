"""Commands of the deep-learning backends: ``models``, ``train`` and ``infer``.

Registered on import by :func:`VertebralFractureLib.cli._load_command_modules`. torch and monai are imported only
inside the commands that need them, so ``models list`` and ``--help`` work without them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from VertebralFractureLib.cli.common import Progress, arguments, backend_options, command


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the deep backends, for any command that segments (``infer``; ``analyze`` may reuse them)."""
    parser.add_argument("--model", metavar="DIR_OR_NAME",
                        help="monai backend: a MONAI bundle folder, a model folder written by `train`, or the name "
                             "of an installed model (default: the installed wholeBody_ct_segmentation)")
    parser.add_argument("--model-sha256", metavar="HEX",
                        help="SHA-256 the model's weight file must have (when its folder has no checksums.sha256)")
    parser.add_argument("--lowres", action="store_true",
                        help="MONAI bundles with a 3 mm model (highres switch): use it instead of the 1.5 mm one")
    parser.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA (float32 throughout)")
    parser.add_argument("--all-channels", action="store_true",
                        help="monai backend: blend every output channel of the network (exact argmax over all "
                             "structures; about 4x the memory for the whole-body bundle)")
    parser.add_argument("--fast", action=argparse.BooleanOptionalAction, default=None,
                        help="totalsegmentator backend: its 3 mm model (--fast) or its 1.5 mm model (--no-fast); "
                             "default: 3 mm for CTs with slices 2.5 mm apart or more, else 1.5 mm")
    parser.add_argument("--no-download", dest="allow_download", action="store_false",
                        help="totalsegmentator backend: do not let it download missing weights (it does by default)")
    parser.add_argument("--allow-download", dest="allow_download", action="store_true", help=argparse.SUPPRESS)


# ------------------------------------------------------------------------------------------------------- models


def _add_models_arguments(parser: argparse.ArgumentParser) -> None:
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    listing = verbs.add_parser("list", help="what the deep backends have here (PyTorch, MONAI and its models with "
                                            "their weights' SHA-256, TotalSegmentator and its weights) and the "
                                            "models the registry can download")
    listing.add_argument("--hashes", action="store_true",
                         help="also compute the SHA-256 of TotalSegmentator's checkpoints (large files: slow)")
    download = verbs.add_parser("download", help="download and install a public model (asks first)")
    download.add_argument("name", help="registry name, e.g. wholeBody_ct_segmentation")
    download.add_argument("--yes", action="store_true", help="consent to the download without being asked")
    download.add_argument("--sha256", metavar="HEX", help="expected SHA-256 of the archive, replacing the hash the "
                                                         "registry pins (a mirror, a newer archive)")
    download.add_argument("--force", action="store_true", help="reinstall even if already installed")
    remove = verbs.add_parser("remove", help="delete an installed model from the cache folder")
    remove.add_argument("name")
    remove.add_argument("--yes", action="store_true", help="do not ask")
    trust = verbs.add_parser("trust", help="record the weight files of a local model folder as trusted "
                                           "(writes checksums.sha256)")
    trust.add_argument("folder")
    verbs.add_parser("path", help="print the cache folder")
    for sub in verbs.choices.values():
        sub.add_argument("--json", action="store_true", help="machine-readable output")
        # -q/-v also after the verb; SUPPRESS keeps the command-level value when they are not repeated here
        sub.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress messages")
        sub.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")


@command("models", "list, download (only when asked) and manage segmentation models in the user cache folder")
@arguments(_add_models_arguments)
def cmd_models(args: argparse.Namespace) -> int:
    from VertebralFractureLib.segment import inventory, models

    as_json = getattr(args, "json", False)
    if args.verb == "path":
        print(json.dumps({"models_dir": str(models.models_dir())}) if as_json else models.models_dir())
        return 0
    if args.verb == "list":
        installed = models.installed_models()
        entries = models.registry()
        found = inventory.inventory(hashes=args.hashes)
        if as_json:
            print(json.dumps({"models_dir": str(models.models_dir()),
                              "installed": [m.to_dict() for m in installed],
                              "registry": [vars(e) for e in entries.values()], **found}, indent=2))
            return 0
        for line in inventory.describe_inventory(found):
            print(line)
        print("available for download (only on request):")
        names = {m.name for m in installed}
        for entry in entries.values():
            pinned_hash = entry.archive_hash()
            pinned = f"{pinned_hash[0].upper()} pinned" if pinned_hash else "no hash pinned: needs --sha256"
            mark = "installed" if entry.name in names else pinned
            print(f"  {entry.name:<28} {entry.title} [{mark}]")
        return 0
    if args.verb == "download":
        folder = models.download(args.name, consent=args.yes, sha256=args.sha256, force=args.force,
                                 progress=not args.quiet)
        print(json.dumps({"installed": str(folder)}) if as_json else f"installed {args.name} in {folder}")
        return 0
    if args.verb == "remove":
        if not args.yes:
            if not sys.stdin.isatty():
                raise models.ModelError(f"removing {args.name} needs confirmation: add --yes")
            if input(f"Delete {models.models_dir() / args.name}? [y/N] ").strip().lower() not in ("y", "yes"):
                return 1
        folder = models.remove(args.name)
        print(f"removed {folder}")
        return 0
    if args.verb == "trust":
        checksums = models.trust(args.folder)
        for name, digest in checksums.items():
            print(f"{digest}  {name}")
        print(f"wrote {Path(args.folder) / models.CHECKSUMS_FILE}")
        return 0
    return 2


# -------------------------------------------------------------------------------------------------------- infer


def _add_infer_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ct", required=True, metavar="CT", help="CT volume (NIfTI, NRRD, MetaImage or DICOM folder)")
    parser.add_argument("--series", metavar="UID", help="SeriesInstanceUID when the DICOM folder holds several")
    parser.add_argument("--out", required=True, metavar="FILE", help="label map to write (.nii.gz), on the CT grid")
    parser.add_argument("--backend", default="auto", choices=["auto", "monai", "totalsegmentator"],
                        help="auto: TotalSegmentator when installed, else an installed MONAI model (default)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    add_backend_arguments(parser)


@command("infer", "segment and name the vertebrae of a CT with a deep backend (MONAI model or TotalSegmentator)")
@arguments(_add_infer_arguments)
def cmd_infer(args: argparse.Namespace) -> int:
    import numpy as np

    from VertebralFractureLib import io
    from VertebralFractureLib.io import labels
    from VertebralFractureLib.segment import get_backend

    progress = Progress(not args.quiet)
    ct = io.read_ct(args.ct, args.series)
    backend = get_backend(args.backend, **backend_options(args))
    output = backend.segment(ct, device=args.device, progress=progress)
    io.write_nifti(output.labels, args.out)
    progress.close()
    present = [int(v) for v in np.unique(output.labels.array) if v != 0]
    print(f"segmentation: {output.backend} ({output.backend_reason})")
    print(f"levels: {', '.join(labels.level_name(v) for v in labels.neighbours_in_order(present)) or 'none'}")
    for line in output.level_evidence + output.warnings:
        print(line)
    print(f"wrote segmentation: {args.out}")
    return 0


# -------------------------------------------------------------------------------------------------------- train


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, metavar="DIR",
                        help="VerSe-layout folder: rawdata/sub-*/*_ct.nii.gz and "
                             "derivatives/sub-*/*_seg-vert_msk.nii.gz")
    parser.add_argument("--out", required=True, metavar="MODEL_DIR", help="model folder (checkpoints, model.json)")
    parser.add_argument("--epochs", type=int, default=100, help="train until this many epochs are done (default 100)")
    parser.add_argument("--resume", action="store_true", help="continue from MODEL_DIR/checkpoint_latest.pt")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument("--network", default="unet", choices=["unet", "segresnet"])
    parser.add_argument("--width", type=int, default=16, help="filters of the first level (default 16)")
    parser.add_argument("--spacing", type=float, default=1.5, help="isotropic training voxel size in mm (1.5)")
    parser.add_argument("--roi", type=int, default=96, help="edge of the random training crops in voxels (96)")
    parser.add_argument("--classes", default="all", choices=["all", "present"],
                        help="output classes: all VerSe ids 1-28, or only those present in the training masks")
    parser.add_argument("--batch-size", type=int, default=2, help="random crops per case and step (2)")
    parser.add_argument("--lr", type=float, default=1e-3, help="learning rate of AdamW (1e-3)")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="share of cases kept for validation (0.2)")
    parser.add_argument("--val-every", type=int, default=1, help="validate every N epochs (1)")
    parser.add_argument("--steps-per-epoch", type=int, help="training steps per epoch (default: one per case)")
    parser.add_argument("--seed", type=int, default=0)


@command("train", "train the project's MONAI vertebra network on a VerSe-layout folder")
@arguments(_add_train_arguments)
def cmd_train(args: argparse.Namespace) -> int:
    from VertebralFractureLib import train

    options = train.TrainOptions(epochs=args.epochs, network=args.network, width=args.width,
                                 spacing_mm=args.spacing, roi=args.roi, classes=args.classes,
                                 batch_size=args.batch_size, lr=args.lr, val_fraction=args.val_fraction,
                                 val_every=args.val_every, seed=args.seed,
                                 steps_per_epoch=args.steps_per_epoch)
    result = train.train(args.data, args.out, options, resume=args.resume, device=args.device,
                         show_progress=not args.quiet)
    print(f"epochs done: {result['epoch']}; best validation Dice {result['best_dice']:.3f} at epoch "
          f"{result['best_epoch']}; last training loss {result['last_loss']:.4f}")
    print(f"model: {Path(args.out) / 'model.json'}")
    return 0
