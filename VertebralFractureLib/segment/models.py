"""Segmentation models on the user's machine: registry, cache folder, consented download, checksums.

Nothing here downloads anything unless a user asks for it by name (``models download NAME``) and agrees
(``--yes`` or an interactive prompt). Every download comes from a registry entry with a pinned URL and the hash its
publisher publishes for the archive (the MONAI Model Zoo publishes a SHA-1 per bundle version in its
``models/model_info.json``); MONAI's own ``monai.apps.download_url`` fetches and checks it, and
``monai.apps.extractall`` unpacks it (refusing members outside the target folder). Installs are atomic: the archive
is fetched into a temporary file and checked, unpacked into a temporary folder, and only then renamed into the cache,
so a failed, partial or tampered download never looks installed and leaves nothing behind.

Cache folder: ``$VERTEBRAL_FRACTURE_CACHE/models`` when that variable is set, else the platform's user cache
(``$XDG_CACHE_HOME`` or ``~/.cache`` on Linux, ``~/Library/Caches`` on macOS, ``%LOCALAPPDATA%`` on Windows)
``/VertebralFracture/models``.

Each installed model folder holds ``checksums.sha256`` (``sha256sum`` format) listing the SHA-256 of its weight
files, computed at install time from the verified archive; the weights are loaded only after their SHA-256 matches
that list (see :func:`verify_sha256`), with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import shutil
import sys
import tempfile
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

from VertebralFractureLib.errors import InputError, VertebralFractureError

log = logging.getLogger(__name__)

CHECKSUMS_FILE = "checksums.sha256"
SOURCE_FILE = "source.json"
WEIGHT_SUFFIXES = (".pt", ".pth", ".ts", ".ckpt")
REGISTRY_ENVIRONMENT = "VERTEBRAL_FRACTURE_MODEL_REGISTRY"
CACHE_ENVIRONMENT = "VERTEBRAL_FRACTURE_CACHE"


class ModelError(VertebralFractureError):
    """A model cannot be found, downloaded, verified or loaded; the message says why and what to do."""


ARCHIVE_HASH_TYPES = ("sha1", "sha256", "md5", "sha512")
"""Hash types an entry may pin (those ``monai.apps.utils.check_hash`` supports)."""
_HASH_LENGTHS = {"md5": 32, "sha1": 40, "sha256": 64, "sha512": 128}


@dataclass(frozen=True)
class RegistryEntry:
    """A public model that ``models download`` may fetch."""

    name: str
    title: str
    url: str
    sha256: str | None = None
    """SHA-256 of the archive at ``url``, when its publisher gives one (else ``hash_val``/``hash_type``)."""
    kind: str = "monai-bundle"
    version: str = ""
    size_mb: float | None = None
    license: str = ""
    homepage: str = ""
    description: str = ""
    hash_val: str | None = None
    """The publisher's hash of the archive, of type ``hash_type`` (the Model Zoo's model_info.json "checksum")."""
    hash_type: str = "sha1"
    hash_source: str = ""
    """Where the pinned hash is published."""

    def archive_hash(self) -> tuple[str, str] | None:
        """(hash type, expected value) of the archive, or None when nothing is pinned."""
        if self.sha256:
            return "sha256", self.sha256
        if self.hash_val:
            return self.hash_type, self.hash_val
        return None


# The MONAI Model Zoo's whole-body CT bundle (SegResNet, 104 TotalSegmentator-v1 structures incl. C1-L5 and the
# sacrum, 1.5 mm and 3 mm weights; Apache-2.0). URL and SHA-1 exactly as the Model Zoo publishes them for version
# 0.2.5 in models/model_info.json (Project-MONAI/model-zoo, key "wholeBody_ct_segmentation_v0.2.5"); MONAI's own
# ``monai.bundle.download`` fetches the same archive from the same host.
WHOLEBODY_VERSION = "0.2.5"
REGISTRY: dict[str, RegistryEntry] = {
    "wholeBody_ct_segmentation": RegistryEntry(
        name="wholeBody_ct_segmentation",
        title="MONAI Model Zoo whole-body CT segmentation (SegResNet, 105 classes, 1.5 mm and 3 mm)",
        url="https://api.ngc.nvidia.com/v2/models/nvidia/monaihosting/wholebody_ct_segmentation/versions/"
            f"{WHOLEBODY_VERSION}/files/wholeBody_ct_segmentation_v{WHOLEBODY_VERSION}.zip",
        hash_val="d3be077219fea4ac9630efddd81c19e0676bf206",
        hash_type="sha1",
        hash_source="https://github.com/Project-MONAI/model-zoo/blob/dev/models/model_info.json",
        version=WHOLEBODY_VERSION,
        license="Apache-2.0 (weights trained on the TotalSegmentator data set, CC BY 4.0)",
        homepage="https://github.com/Project-MONAI/model-zoo/tree/dev/models/wholeBody_ct_segmentation",
        description="Vertebrae C1-L5 and sacrum among 104 structures; not for diagnostic use (model card).",
    ),
}


@dataclass
class InstalledModel:
    name: str
    path: Path
    kind: str
    source: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["path"] = str(self.path)
        return data


# --------------------------------------------------------------------------------------------------- locations


def cache_root() -> Path:
    """The user cache folder of the project (models live in its ``models`` sub-folder)."""
    configured = os.environ.get(CACHE_ENVIRONMENT)
    if configured:
        return Path(configured).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
        return base / "VertebralFracture" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "VertebralFracture"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "VertebralFracture"


def models_dir() -> Path:
    return cache_root() / "models"


def registry() -> dict[str, RegistryEntry]:
    """Built-in entries, extended or overridden by a JSON file named in ``$VERTEBRAL_FRACTURE_MODEL_REGISTRY``.

    The file holds a list of entries with the fields of :class:`RegistryEntry` (a lab's mirror, a newer version).
    """
    entries = dict(REGISTRY)
    extra = os.environ.get(REGISTRY_ENVIRONMENT)
    if extra:
        path = Path(extra)
        try:
            items = json.loads(path.read_text(encoding="utf-8"))
            for item in items:
                entry = RegistryEntry(**item)
                entries[entry.name] = entry
        except (OSError, ValueError, TypeError) as error:
            raise InputError(path, f"is not a usable model registry (a JSON list of entries): {error}") from None
    return entries


def installed_models(folder: Path | None = None) -> list[InstalledModel]:
    """Models in the cache folder (a sub-folder with a MONAI bundle or a project ``model.json``)."""
    folder = models_dir() if folder is None else Path(folder)
    found = []
    if not folder.is_dir():
        return found
    for child in sorted(folder.iterdir()):
        if not child.is_dir() or child.name.startswith("."):
            continue
        kind = model_kind(child)
        if kind is None:
            continue
        source = {}
        with contextlib.suppress(OSError, ValueError):
            source = json.loads((child / SOURCE_FILE).read_text(encoding="utf-8"))
        found.append(InstalledModel(name=child.name, path=child, kind=kind, source=source))
    return found


def model_kind(folder: Path) -> str | None:
    """"monai-bundle" (configs/ + models/), "project" (model.json) or None."""
    folder = Path(folder)
    if (folder / "model.json").is_file():
        return "project"
    if (folder / "configs").is_dir() and any((folder / "configs" / f"inference{suffix}").is_file()
                                             for suffix in (".json", ".yaml", ".yml")):
        return "monai-bundle"
    return None


def find_model(name_or_path: str | Path | None) -> Path:
    """A model folder from a path, or from the name of an installed model; None means the default bundle."""
    if name_or_path is None:
        name_or_path = "wholeBody_ct_segmentation"
        candidate = models_dir() / str(name_or_path)
        if model_kind(candidate) is None:
            from VertebralFractureLib.segment import environment

            raise ModelError("no MONAI model is installed: for the public whole-body bundle, "
                             f"{environment.monai_model_hint()}; or give a model folder with --model DIR")
        return candidate
    path = Path(name_or_path).expanduser()
    if path.is_file() and path.name == "model.json":
        path = path.parent
    if path.exists():
        if model_kind(path) is None:
            raise InputError(path, "is not a model folder: expected a MONAI bundle (configs/inference.json, "
                                   "configs/metadata.json, models/model.pt) or a trained model (model.json)")
        return path
    candidate = models_dir() / str(name_or_path)
    if model_kind(candidate) is not None:
        return candidate
    installed = ", ".join(m.name for m in installed_models()) or "none"
    raise ModelError(f"model {name_or_path!r} is neither a folder nor installed in {models_dir()} "
                     f"(installed: {installed}); see `{_cli('models', 'list')}`")


def _cli(*arguments: str) -> str:
    from VertebralFractureLib.segment import environment

    return environment.cli_command(*arguments)


# --------------------------------------------------------------------------------------------------- checksums


def sha256_file(path: str | Path) -> str:
    from VertebralFractureLib.io.download import sha256_file as file_hash

    return file_hash(path)


def _normalise_hash(value: str) -> str:
    value = value.strip().lower()
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise ModelError(f"{value!r} is not a SHA-256 (64 hexadecimal digits)")
    return value


def verify_sha256(path: str | Path, expected: str) -> str:
    """Raise unless the file's SHA-256 equals ``expected``; returns the hash."""
    expected = _normalise_hash(expected)
    actual = sha256_file(path)
    if actual != expected:
        raise InputError(path, f"SHA-256 {actual} does not match the expected {expected}: the file is corrupt, "
                               "incomplete or not the published one; it is not loaded (download it again)")
    return actual


def read_checksums(folder: Path) -> dict[str, str]:
    """``checksums.sha256`` of a model folder -> {relative posix path: sha256}."""
    path = Path(folder) / CHECKSUMS_FILE
    if not path.is_file():
        return {}
    checksums = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        digest, _, name = line.partition(" ")
        checksums[name.strip().lstrip("*")] = digest.lower()
    return checksums


def write_checksums(folder: Path, files: list[Path] | None = None) -> dict[str, str]:
    """Hash the weight files of a model folder into ``checksums.sha256`` (atomic write)."""
    from VertebralFractureLib.io import write_text_atomic

    folder = Path(folder)
    if files is None:
        files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    checksums = {p.relative_to(folder).as_posix(): sha256_file(p) for p in files}
    write_text_atomic(folder / CHECKSUMS_FILE, "".join(f"{h}  {n}\n" for n, h in sorted(checksums.items())))
    return checksums


def expected_sha256(folder: Path, weights: Path, given: str | None = None) -> str:
    """The SHA-256 a weight file must have: the one given by the user, else the model folder's checksum list."""
    if given:
        return _normalise_hash(given)
    relative = Path(weights).resolve().relative_to(Path(folder).resolve()).as_posix()
    known = read_checksums(folder).get(relative)
    if known:
        return known
    raise ModelError(f"{weights}: no SHA-256 is known for these weights (no entry in {Path(folder) / CHECKSUMS_FILE}); "
                     "weights are loaded only after their checksum matches. Give the published SHA-256 with "
                     "--model-sha256 HEX, or run `" + _cli("models", "trust", str(folder))
                     + "` to record the current files as trusted")


# --------------------------------------------------------------------------------------------------- download


def _ask_consent(entry: RegistryEntry, destination: Path) -> bool:
    size = f"{entry.size_mb:.0f} MB, " if entry.size_mb else ""
    question = (f"Download {entry.title} ({size}licence: {entry.license or 'see homepage'})\n  from {entry.url}\n"
                f"  into {destination}? [y/N] ")
    try:
        answer = input(question)
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


def _check_members(archive: Path) -> None:
    """Refuse a zip whose members would land outside the install folder (absolute paths, ``..``, symbolic links).

    ``monai.apps.extractall`` refuses absolute and ``..`` paths too; zip members that are symbolic links are caught
    only here (zipfile has no link type, the Unix mode bits in ``external_attr`` say it)."""
    try:
        with zipfile.ZipFile(archive) as handle:
            members = handle.infolist()
    except zipfile.BadZipFile as error:
        raise ModelError(f"the downloaded file is not a zip archive ({error}); nothing was installed") from None
    for member in members:
        name = PurePosixPath(member.filename.replace("\\", "/"))
        if name.is_absolute() or ".." in name.parts or (member.external_attr >> 16) & 0o170000 == 0o120000:
            raise ModelError(f"archive member {member.filename!r} points outside the install folder; refused, "
                             "nothing was installed")


def _bundle_root(folder: Path) -> Path:
    """The folder inside an unpacked archive that holds the model (archives usually wrap it in one folder)."""
    if model_kind(folder):
        return folder
    candidates = [p for p in folder.rglob("*") if p.is_dir() and model_kind(p)]
    if len(candidates) != 1:
        raise ModelError(f"the archive holds {len(candidates)} model folders (configs/inference.json or "
                         "model.json); exactly one is needed")
    return candidates[0]


def _expected_archive_hash(entry: RegistryEntry, sha256: str | None) -> tuple[str, str]:
    if sha256:
        return "sha256", _normalise_hash(sha256)
    pinned = entry.archive_hash()
    if pinned is None:
        raise ModelError(f"no hash is pinned for {entry.name} ({entry.url}), so it is not installed unverified; "
                         "check the archive's SHA-256 with its publisher and pass it with --sha256 HEX")
    hash_type, value = pinned[0].lower(), pinned[1].strip().lower()
    if hash_type not in ARCHIVE_HASH_TYPES or len(value) != _HASH_LENGTHS[hash_type] \
            or any(c not in "0123456789abcdef" for c in value):
        raise ModelError(f"the registry entry {entry.name} pins {hash_type} {value!r}, which is not a valid hash")
    return hash_type, value


def _import_monai_apps():
    try:
        from monai.apps import download_url, extractall
        from monai.apps.utils import HashCheckError
    except ImportError:
        from VertebralFractureLib.segment import environment

        raise ModelError(f"downloading a MONAI model needs MONAI: {environment.monai_install_hint()}") from None
    return download_url, extractall, HashCheckError


def download(name: str, *, consent: bool = False, sha256: str | None = None, force: bool = False,
             progress=None, destination: Path | None = None) -> Path:
    """Install the registry entry ``name`` into the cache; returns the model folder.

    ``consent`` is the user's "yes" (``--yes``); without it an interactive terminal is asked, anything else is
    refused. The archive must match the entry's pinned hash (the publisher's SHA-1 for the Model Zoo), or ``sha256``
    when given (it replaces the pinned hash: a mirror, a newer archive). ``progress`` (a callable or a bool) shows
    MONAI's download progress bar.
    """
    entries = registry()
    if name not in entries:
        raise ModelError(f"unknown model {name!r}; known: {', '.join(sorted(entries))}")
    entry = entries[name]
    hash_type, expected = _expected_archive_hash(entry, sha256)
    target_dir = models_dir() if destination is None else Path(destination)
    final = target_dir / name
    if model_kind(final) and not force:
        log.info("%s is already installed in %s", name, final)
        return final
    if not consent:
        if not sys.stdin.isatty():
            raise ModelError(f"downloading {name} from {entry.url} needs your consent: add --yes "
                             "(no terminal to ask on)")
        if not _ask_consent(entry, final):
            raise ModelError(f"download of {name} declined; nothing was written")
    download_url, extractall, hash_check_error = _import_monai_apps()
    target_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{name}-", suffix=".install", dir=target_dir))
    monai_log = logging.getLogger("monai.apps")
    monai_level = monai_log.level
    monai_log.setLevel(logging.CRITICAL)  # its "Download failed" lines would repeat the one-line error raised here
    try:
        archive = work / "archive.zip"
        try:
            download_url(entry.url, archive, hash_val=expected, hash_type=hash_type, progress=bool(progress))
        except hash_check_error:
            raise ModelError(f"{entry.url}: the archive's {hash_type.upper()} does not match the pinned {expected} "
                             "(corrupt, incomplete or not the published file); it is discarded, nothing was "
                             "installed") from None
        except (OSError, ValueError, RuntimeError) as error:  # URLError, ContentTooShortError (partial) are OSErrors
            reason = getattr(error, "reason", None) or str(error).strip().splitlines()[0] or type(error).__name__
            raise ModelError(f"{entry.url}: download failed ({reason}); nothing was installed") from None
        if not archive.is_file():  # download_url swallows some permission errors
            raise ModelError(f"{entry.url}: download failed (no file was written); nothing was installed")
        _check_members(archive)
        unpacked = work / "unpacked"
        try:
            extractall(archive, unpacked, file_type="zip", has_base=False)
        except ValueError as error:
            raise ModelError(f"archive member refused ({error}); nothing was installed") from None
        root = _bundle_root(unpacked)
        checksums = write_checksums(root)
        if not checksums:
            raise ModelError(f"{entry.url}: the archive holds no weight files ({', '.join(WEIGHT_SUFFIXES)}); "
                             "nothing was installed")
        source = {"name": name, "url": entry.url, "archive_hash_type": hash_type, "archive_hash": expected,
                  "archive_sha256": sha256_file(archive), "hash_source": entry.hash_source,
                  "version": entry.version, "license": entry.license, "kind": entry.kind,
                  "weights_sha256": checksums,
                  "installed_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
        (root / SOURCE_FILE).write_text(json.dumps(source, indent=2), encoding="utf-8")
        _replace_folder(root, final)
    finally:
        monai_log.setLevel(monai_level)
        shutil.rmtree(work, ignore_errors=True)
    log.info("installed %s into %s", name, final)
    return final


def _replace_folder(source: Path, final: Path) -> None:
    """Move ``source`` to ``final``; an existing ``final`` is set aside first and removed only afterwards."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}-old-{os.getpid()}")
        os.replace(final, old)
    try:
        os.replace(source, final)
    except BaseException:
        if old is not None:
            os.replace(old, final)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def remove(name: str) -> Path:
    """Delete the installed model ``name`` (a folder name in the cache, nothing else: a path, ``..`` or a link
    that leads out of the cache is refused, so nothing outside the cache is ever deleted)."""
    cache = models_dir()
    folder = cache / name
    if not name or Path(name).name != name or name in (".", "..") or "\\" in name:
        raise ModelError(f"{name}: not the name of an installed model; `models remove` takes a name from "
                         f"`models list` and deletes only inside {cache}")
    if folder.is_symlink() or (folder.exists() and folder.resolve().parent != cache.resolve()):
        raise ModelError(f"{folder}: a link out of the model cache; `models remove` deletes only inside {cache}")
    if model_kind(folder) is None:
        raise ModelError(f"{name} is not installed in {cache}")
    shutil.rmtree(folder)
    return folder


def trust(folder: str | Path) -> dict[str, str]:
    """Record the current weight files of a local model folder as trusted (writes ``checksums.sha256``)."""
    folder = Path(folder)
    if model_kind(folder) is None:
        raise InputError(folder, "is not a model folder (MONAI bundle or model.json)")
    checksums = write_checksums(folder)
    if not checksums:
        raise InputError(folder, f"holds no weight files ({', '.join(WEIGHT_SUFFIXES)})")
    return checksums

