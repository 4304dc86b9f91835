"""The models command and cache: consent, pinned SHA-256, atomic install; served from file:// and 127.0.0.1."""

from __future__ import annotations

import http.server
import json
import threading
import zipfile
from functools import partial

import pytest

from VertebralFractureLib import cli, models
from VertebralFractureLib.errors import InputError


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
    assert "does not match the pinned" in capsys.readouterr().err
    assert not any((cache / "models").iterdir())  # nothing installed, no partial file


def test_no_pinned_sha256_is_refused_unless_given(tmp_path, cache, monkeypatch, bundle_archive):
    # The built-in entry for the public bundle has no published SHA-256: refused before any network access.
    with pytest.raises(models.ModelError, match="no SHA-256 is pinned for wholeBody_ct_segmentation"):
        models.download("wholeBody_ct_segmentation", consent=True)
    assert models.REGISTRY["wholeBody_ct_segmentation"].url.startswith("https://github.com/Project-MONAI/")
    _use_registry(tmp_path, monkeypatch, [_entry("wb", bundle_archive.as_uri(), None)])
    with pytest.raises(models.ModelError, match="--sha256"):
        models.download("wb", consent=True)
    folder = models.download("wb", consent=True, sha256=models.sha256_file(bundle_archive).upper())
    assert models.model_kind(folder) == "monai-bundle"


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


def test_archive_escaping_the_install_folder_is_refused(tmp_path, cache, monkeypatch):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("../outside.txt", "x")
    _use_registry(tmp_path, monkeypatch, [_entry("evil", archive.as_uri(), models.sha256_file(archive))])
    with pytest.raises(models.ModelError, match="outside the install folder"):
        models.download("evil", consent=True)
    assert not (cache / "outside.txt").exists() and not (cache / "models" / "evil").exists()


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
