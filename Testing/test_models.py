"""The models command and cache: consent, the publisher's pinned hash, atomic install; served from file:// and from
an HTTP server on 127.0.0.1 that stands in for the Model Zoo's host."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import json
import threading
import zipfile
from functools import partial

import pytest

from VertebralFractureLib import cli
from VertebralFractureLib.errors import InputError
from VertebralFractureLib.segment import models


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("VERTEBRAL_FRACTURE_CACHE", str(folder))
    return folder


@pytest.fixture()
def bundle_archive(tmp_path):
    pytest.importorskip("monai")
    from deep_builders import make_wholebody_bundle, zip_folder

    bundle = make_wholebody_bundle(tmp_path / "build" / "wholeBody_ct_segmentation", checksums=False)
    archive = zip_folder(bundle, tmp_path / "wholeBody_ct_segmentation_v0.1.9.zip")
    return archive


def _use_registry(tmp_path, monkeypatch, entries: list[dict]):
    path = tmp_path / "registry.json"
    path.write_text(json.dumps(entries))
    monkeypatch.setenv(models.REGISTRY_ENVIRONMENT, str(path))


def _entry(name, url, sha256):
    return {"name": name, "title": f"test bundle {name}", "url": url, "sha256": sha256, "version": "0.1.9"}


def _sha1(path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


class _ModelHost(http.server.BaseHTTPRequestHandler):
    """Serves ``files`` by name; a name in ``truncated`` announces its full length but sends half and hangs up."""

    files: dict[str, bytes] = {}
    truncated: set[str] = set()

    def do_GET(self):  # noqa: N802 (http.server's name)
        name = self.path.rsplit("/", 1)[-1]
        if name not in self.files:
            self.send_error(404)
            return
        body = self.files[name]
        self.send_response(200)
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if name in self.truncated else body)
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture()
def model_host():
    """An HTTP server on 127.0.0.1 in a thread; returns (base URL, files dict, truncated set)."""
    handler = type("Host", (_ModelHost,), {"files": {}, "truncated": set()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v2/models/files", handler.files, handler.truncated
    finally:
        server.shutdown()
        server.server_close()


def _point_builtin_entry_at(monkeypatch, url: str, sha1: str):
    """The built-in wholeBody_ct_segmentation entry, with its URL and SHA-1 moved to the local host."""
    entry = models.REGISTRY["wholeBody_ct_segmentation"]
    monkeypatch.setitem(models.REGISTRY, entry.name, dataclasses.replace(entry, url=url, hash_val=sha1))


def _cache_is_empty(cache) -> bool:
    folder = cache / "models"
    return not folder.exists() or not any(folder.iterdir())


def test_cache_folder_follows_the_environment(cache, monkeypatch):
    assert models.models_dir() == cache / "models"
    monkeypatch.delenv("VERTEBRAL_FRACTURE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache / "xdg"))
    if models.sys.platform.startswith("linux"):
        assert models.models_dir() == cache / "xdg" / "VertebralFracture" / "models"


def test_download_from_file_url_installs_atomically_and_loads(tmp_path, cache, monkeypatch, bundle_archive):
    digest = models.sha256_file(bundle_archive)
    _use_registry(tmp_path, monkeypatch, [_entry("wb", bundle_archive.as_uri(), digest)])
    folder = models.download("wb", consent=True)
    assert folder == cache / "models" / "wb"
    assert models.model_kind(folder) == "monai-bundle"
    source = json.loads((folder / "source.json").read_text())
    assert source["archive_sha256"] == digest and source["url"] == bundle_archive.as_uri()
    checksums = models.read_checksums(folder)
    assert set(checksums) == {"models/model_lowres.pt"}
    assert sorted(p.name for p in (cache / "models").iterdir()) == ["wb"]  # no temporary files left
    assert [m.name for m in models.installed_models()] == ["wb"]

    from VertebralFractureLib.segment import monai_backend

    loaded = monai_backend.load_model("wb")  # by name, from the cache, checksum verified
    assert loaded.folder == folder and loaded.weights_sha256 == checksums["models/model_lowres.pt"]


def test_cli_download_over_http_from_localhost(tmp_path, cache, monkeypatch, bundle_archive, capsys):
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(bundle_archive.parent))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{bundle_archive.name}"
        _use_registry(tmp_path, monkeypatch, [_entry("wb", url, models.sha256_file(bundle_archive))])
        assert cli.main(["models", "download", "wb", "--yes", "-q"]) == 0
        assert "installed wb" in capsys.readouterr().out
        assert cli.main(["models", "list"]) == 0
        listing = capsys.readouterr().out
        assert "wb" in listing and "monai-bundle" in listing and url in listing
        assert cli.main(["models", "list", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["installed"][0]["name"] == "wb"
        assert cli.main(["models", "remove", "wb", "--yes"]) == 0
        assert not (cache / "models" / "wb").exists()
    finally:
        server.shutdown()
        server.server_close()


def test_checksum_mismatch_discards_the_download(tmp_path, cache, monkeypatch, bundle_archive, capsys):
    _use_registry(tmp_path, monkeypatch, [_entry("wb", bundle_archive.as_uri(), "ab" * 32)])
    assert cli.main(["models", "download", "wb", "--yes", "-q"]) == 2
    assert "SHA256 does not match the pinned" in capsys.readouterr().err
    assert not any((cache / "models").iterdir())  # nothing installed, no partial file


def test_builtin_entry_pins_the_model_zoo_url_and_sha1():
    """The Model Zoo's models/model_info.json entry "wholeBody_ct_segmentation_v0.2.5": its source and checksum."""
    entry = models.REGISTRY["wholeBody_ct_segmentation"]
    assert entry.archive_hash() == ("sha1", "d3be077219fea4ac9630efddd81c19e0676bf206")
    assert entry.url == ("https://api.ngc.nvidia.com/v2/models/nvidia/monaihosting/wholebody_ct_segmentation/"
                         "versions/0.2.5/files/wholeBody_ct_segmentation_v0.2.5.zip")
    assert entry.version == "0.2.5" and "model_info.json" in entry.hash_source


def test_builtin_entry_downloads_from_a_local_host_with_its_sha1(cache, monkeypatch, tmp_path, model_host, capsys,
                                                                shared_file):
    """`models download wholeBody_ct_segmentation --yes` against a stand-in host: no hash to give by hand; the
    weights' SHA-256 is recorded and the backend loads them (weights only) by name; `analyze` then picks it."""
    pytest.importorskip("monai")
    from deep_builders import constant_class_state, make_wholebody_bundle, zip_folder

    bundle = make_wholebody_bundle(tmp_path / "build" / "wholeBody_ct_segmentation",
                                   state_dict=constant_class_state(23), checksums=False)  # T12 everywhere
    archive = zip_folder(bundle, tmp_path / "wholeBody_ct_segmentation_v0.2.5.zip")
    base, files, _truncated = model_host
    files[archive.name] = archive.read_bytes()
    _point_builtin_entry_at(monkeypatch, f"{base}/{archive.name}", _sha1(archive))

    assert cli.main(["models", "download", "wholeBody_ct_segmentation", "--yes", "-q"]) == 0
    folder = cache / "models" / "wholeBody_ct_segmentation"
    assert "installed wholeBody_ct_segmentation" in capsys.readouterr().out
    source = json.loads((folder / "source.json").read_text())
    assert source["archive_hash_type"] == "sha1" and source["archive_hash"] == _sha1(archive)
    weights = folder / "models" / "model_lowres.pt"
    assert models.read_checksums(folder) == {"models/model_lowres.pt": models.sha256_file(weights)}
    assert source["weights_sha256"] == models.read_checksums(folder)
    assert sorted(p.name for p in (cache / "models").iterdir()) == ["wholeBody_ct_segmentation"]

    from VertebralFractureLib.segment import monai_backend

    loaded = monai_backend.load_model(None)  # the default model, from the cache, checksum verified
    assert loaded.folder == folder and loaded.weights_sha256 == models.sha256_file(weights)

    out = tmp_path / "analysis"
    ct = shared_file("tptbox/sub-ct_label-22_ct.nii.gz")
    code = cli.main(["analyze", "--ct", str(ct), "--out", str(out), "--device", "cpu", "-q"])
    assert code == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert results["segmentation_backend"] == "monai"
    assert "wholeBody_ct_segmentation is installed" in results["segmentation_backend_reason"]
    assert results["segmentation_backend_details"]["weights_sha256"] == models.sha256_file(weights)


@pytest.mark.parametrize("defect", ["sha1 mismatch", "partial download", "member outside the folder",
                                    "symbolic link member", "not a zip"])
def test_bad_downloads_are_refused_and_leave_nothing(defect, cache, monkeypatch, tmp_path, model_host, capsys,
                                                     bundle_archive):
    base, files, truncated = model_host
    archive = bundle_archive
    if defect == "member outside the folder":
        archive = tmp_path / "slip.zip"
        with zipfile.ZipFile(archive, "w") as handle:
            handle.writestr("wholeBody_ct_segmentation/configs/inference.json", "{}")
            handle.writestr("../../outside.txt", "x")
    elif defect == "symbolic link member":
        archive = tmp_path / "link.zip"
        with zipfile.ZipFile(archive, "w") as handle:
            link = zipfile.ZipInfo("wholeBody_ct_segmentation/models/model.pt")
            link.external_attr = (0o120777 << 16)
            handle.writestr(link, "/etc/passwd")
    elif defect == "not a zip":
        archive = tmp_path / "page.zip"
        archive.write_text("<html>not found</html>")
    files[archive.name] = archive.read_bytes()
    if defect == "partial download":
        truncated.add(archive.name)
    sha1 = "0" * 40 if defect == "sha1 mismatch" else _sha1(archive)
    _point_builtin_entry_at(monkeypatch, f"{base}/{archive.name}", sha1)

    assert cli.main(["models", "download", "wholeBody_ct_segmentation", "--yes", "-q"]) == 2
    captured = capsys.readouterr()
    error = captured.err.strip()
    assert error.startswith("error:") and "\n" not in error and "nothing was installed" in error, error
    expected = {"sha1 mismatch": "SHA1 does not match the pinned", "partial download": "download failed",
                "member outside the folder": "outside the install folder",
                "symbolic link member": "outside the install folder", "not a zip": "not a zip archive"}[defect]
    assert expected in error
    assert _cache_is_empty(cache)  # no archive, no staging folder, no half-unpacked bundle
    assert not (tmp_path / "outside.txt").exists() and not (cache / "outside.txt").exists()


def test_user_given_sha256_replaces_the_pinned_hash(tmp_path, cache, monkeypatch, bundle_archive):
    _use_registry(tmp_path, monkeypatch, [_entry("wb", bundle_archive.as_uri(), None)])
    with pytest.raises(models.ModelError, match="no hash is pinned for wb"):
        models.download("wb", consent=True)
    folder = models.download("wb", consent=True, sha256=models.sha256_file(bundle_archive).upper())
    assert models.model_kind(folder) == "monai-bundle"
    assert json.loads((folder / "source.json").read_text())["archive_hash_type"] == "sha256"


def test_download_needs_consent(tmp_path, cache, monkeypatch, bundle_archive):
    _use_registry(tmp_path, monkeypatch, [_entry("wb", bundle_archive.as_uri(), models.sha256_file(bundle_archive))])
    monkeypatch.setattr(models.sys.stdin, "isatty", lambda: False, raising=False)
    with pytest.raises(models.ModelError, match="needs your consent: add --yes"):
        models.download("wb")
    monkeypatch.setattr(models.sys.stdin, "isatty", lambda: True, raising=False)
    answers = iter(["n", "yes"])
    questions = []
    monkeypatch.setattr("builtins.input", lambda question: questions.append(question) or next(answers))
    with pytest.raises(models.ModelError, match="declined"):
        models.download("wb")
    assert not (cache / "models" / "wb").exists()
    assert models.download("wb").is_dir()
    assert bundle_archive.as_uri() in questions[0] and str(cache / "models" / "wb") in questions[0]


def test_unreachable_url_is_a_one_line_error(tmp_path, cache, monkeypatch, capsys):
    _use_registry(tmp_path, monkeypatch, [_entry("gone", (tmp_path / "missing.zip").as_uri(), "cd" * 32)])
    assert cli.main(["models", "download", "gone", "--yes", "-q"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error:") and "download failed" in error and "\n" not in error


def test_reinstall_with_force_replaces_the_folder(tmp_path, cache, monkeypatch, bundle_archive):
    _use_registry(tmp_path, monkeypatch, [_entry("wb", bundle_archive.as_uri(), models.sha256_file(bundle_archive))])
    folder = models.download("wb", consent=True)
    (folder / "stale.txt").write_text("old")
    assert models.download("wb", consent=True) == folder and (folder / "stale.txt").exists()  # no re-download
    models.download("wb", consent=True, force=True)
    assert not (folder / "stale.txt").exists()
    assert sorted(p.name for p in (cache / "models").iterdir()) == ["wb"]


def test_trust_records_local_weights(tmp_path, cache, capsys):
    pytest.importorskip("monai")
    from deep_builders import make_wholebody_bundle

    bundle = make_wholebody_bundle(tmp_path / "local", checksums=False)
    assert models.read_checksums(bundle) == {}
    assert cli.main(["models", "trust", str(bundle)]) == 0
    assert set(models.read_checksums(bundle)) == {"models/model_lowres.pt"}
    with pytest.raises(InputError, match="not a model folder"):
        models.trust(tmp_path)


def test_bad_registry_file(tmp_path, monkeypatch):
    path = tmp_path / "registry.json"
    path.write_text("{not json")
    monkeypatch.setenv(models.REGISTRY_ENVIRONMENT, str(path))
    with pytest.raises(InputError, match="not a usable model registry"):
        models.registry()
