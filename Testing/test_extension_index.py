"""The Extensions Index's own checks on this repository: ``scripts/check_description_files.py`` of
github.com/Slicer/ExtensionsIndex (vendored unchanged in ``Testing/extensions_index/``, see its README), run on the
catalog entry ``ExtensionsIndex/VertebralFracture.json`` and this checkout, the way the Index's CI runs it on a
submission.

The Index's CI clones the repository and downloads the schema, the icon and the screenshots; here, offline, the
clone is a copy of the files git tracks, the schema is the vendored copy, and an image URL of this repository's
``main`` branch is served from the checkout (its type read from the file's first bytes, as a web server's
Content-Type would say). Any other URL fails the check. The one rule not run is the GitHub-topic check, which asks
GitHub's API about a repository setting that no file holds (README, *Extensions Index*, lists it for submission).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path
from urllib.parse import urlsplit

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
INDEX_FOLDER = Path(__file__).resolve().parent / "extensions_index"
ENTRY = REPOSITORY / "ExtensionsIndex" / "VertebralFracture.json"
IMAGE_TYPES = {b"\x89PNG\r\n\x1a\n": "image/png", b"\xff\xd8\xff": "image/jpeg", b"GIF8": "image/gif"}

# The vendored script targets the Index's Python (3.12); one line of its --print-categories option (never called by
# the checks) uses a 3.12-only f-string. On older Pythons that line alone is rewritten before compiling.
PY312_ONLY_LINE = ("""print(f"[\\n{'\\n'.join(f'    "{category}",' for category in """
                   """sorted(extensions_for_categories.keys()))}\\n]")""")
PY311_LINE = ("""print("[\\n" + "\\n".join(f'    "{category}",' for category in """
              """sorted(extensions_for_categories.keys())) + "\\n]")""")


def _load_index_script():
    pytest.importorskip("jsonschema", reason="jsonschema is needed for the Index's schema check")
    source = (INDEX_FOLDER / "check_description_files.py").read_text(encoding="utf-8")
    if sys.version_info < (3, 12):
        assert source.count(PY312_ONLY_LINE) == 1, "the vendored script changed: review the Python 3.11 rewrite"
        source = source.replace(PY312_ONLY_LINE, PY311_LINE)
    module = types.ModuleType("check_description_files")
    module.__file__ = str(INDEX_FOLDER / "check_description_files.py")
    exec(compile(source, module.__file__, "exec"), module.__dict__)  # noqa: S102 (the Index's own script)
    return module


class _Response:
    def __init__(self, url: str, content: bytes, content_type: str):
        self.url, self.content, self.status_code = url, content, 200
        self.headers = {"Content-Type": content_type}
        self.text = content.decode("utf-8", errors="replace")

    def raise_for_status(self) -> None:
        pass

    def json(self):
        return json.loads(self.content)


class OfflineRequests:
    """The part of ``requests`` the Index's script uses, answering from this checkout and the vendored schema."""

    class RequestException(Exception):
        pass

    def __init__(self, owner: str, repository: str):
        self.raw_prefix = f"https://raw.githubusercontent.com/{owner}/{repository}/main/"
        self.requested: list[str] = []

    def get(self, url: str, timeout=None, headers=None):
        self.requested.append(url)
        if url.startswith(self.raw_prefix):
            path = REPOSITORY / url[len(self.raw_prefix):]
            if not path.is_file():
                raise self.RequestException(f"404 Not Found: {url}")
            content = path.read_bytes()
            kind = next((kind for magic, kind in IMAGE_TYPES.items() if content.startswith(magic)),
                        "application/octet-stream")
            return _Response(url, content, kind)
        schema = INDEX_FOLDER / Path(urlsplit(url).path).name
        if "/Schemas/" in url and schema.suffix == ".json" and schema.is_file():
            return _Response(url, schema.read_bytes(), "application/json")
        raise self.RequestException(f"offline: {url} is not served here")


def _repository_of(url: str) -> tuple[str, str]:
    parts = urlsplit(url).path.strip("/").split("/")
    return parts[0], parts[1].removesuffix(".git")


def _copy_tracked_files(extension_name, metadata, cloned_repository_folder):
    """The clone step: the files git tracks in this checkout (as committed or being committed)."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPOSITORY, capture_output=True, check=True).stdout
    for relative in filter(None, listed.decode().split("\0")):
        source = REPOSITORY / relative
        if source.is_file():
            target = Path(cloned_repository_folder) / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


@pytest.fixture()
def metadata():
    return json.loads(ENTRY.read_text(encoding="utf-8"))


@pytest.fixture()
def index_checks(metadata, monkeypatch):
    if not (REPOSITORY / ".git").exists():
        pytest.skip("not a git checkout: the clone step copies the files git tracks")
    module = _load_index_script()
    offline = OfflineRequests(*_repository_of(metadata["scm_url"]))
    monkeypatch.setattr(module, "requests", offline)
    monkeypatch.setattr(module, "check_clone_repository", _copy_tracked_files)
    monkeypatch.setattr(module, "check_git_repository_topics", lambda name, metadata: None)
    return module, offline


def test_the_index_checks_pass_on_the_catalog_entry(index_checks, tmp_path, monkeypatch, capsys):
    """The Index's main(): every check of a new submission, then the dependency check over the catalog folder
    (this entry and the PyTorch extension's entry, which it depends on)."""
    module, offline = index_checks
    shutil.copy(ENTRY, tmp_path / ENTRY.name)
    shutil.copy(INDEX_FOLDER / "PyTorch.json", tmp_path / "PyTorch.json")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["check_description_files.py", ENTRY.name])
    status = module.main()
    report = capsys.readouterr().out
    assert status == 0 and ":x:" not in report, report
    for check in ("Clone repository", "Check repository size", "Check JSON schema", "Check JSON file format",
                  "Check extension name", "Check category", "Check git repository name", "Check SCM URL syntax",
                  "Check CMakeLists.txt content", "Check license file"):
        assert f":white_check_mark: {check} completed successfully" in report, check
    # The icon and every screenshot were fetched (from the checkout) and are images.
    cmake = (REPOSITORY / "CMakeLists.txt").read_text(encoding="utf-8")
    screenshots = re.search(r'set\(EXTENSION_SCREENSHOTURLS\s*"([^"]+)"\)', cmake).group(1).split()
    icon = re.search(r'set\(EXTENSION_ICONURL\s*"([^"]+)"\)', cmake).group(1)
    assert screenshots and set(screenshots) | {icon} <= set(offline.requested)


def test_a_broken_entry_is_refused_by_the_same_checks(index_checks, metadata, tmp_path, monkeypatch, capsys):
    """The harness can fail: an unknown category, a repository name without the Slicer prefix, a missing
    screenshot and a dependency the Index does not have are each reported."""
    module, _offline = index_checks
    broken = dict(metadata, category="Osteoporosis", scm_url="https://github.com/VertebralFracture/Spine.git",
                  build_dependencies=["NoSuchExtension"])
    (tmp_path / ENTRY.name).write_text(json.dumps(broken, indent=2) + "\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["check_description_files.py", ENTRY.name])
    assert module.main() == 1
    report = capsys.readouterr().out
    assert ":x: Check category failed" in report
    assert ":x: Check git repository name failed" in report
    assert "'NoSuchExtension' extension is not found" in report
    with pytest.raises(module.ExtensionCheckError, match="404 Not Found"):
        module.validate_image_url(f"{_offline.raw_prefix}Screenshots/missing.png", "EXTENSION_SCREENSHOTURLS",
                                  "VertebralFracture", "check_cmakelists_content")


def test_entry_agrees_with_the_cmake_metadata(metadata):
    """The PR template's "content of the json file is consistent with the top-level CMakeLists.txt": the
    dependencies, the category, and one repository for the entry, homepage, icon and screenshots."""
    cmake = (REPOSITORY / "CMakeLists.txt").read_text(encoding="utf-8")

    def value(name):
        return re.search(rf'set\({name}\s+"([^"]*)"\)', cmake).group(1)

    assert metadata["build_dependencies"] == value("EXTENSION_DEPENDS").split() == ["PyTorch"]
    assert metadata["category"] == value("EXTENSION_CATEGORY")
    owner, repository = _repository_of(metadata["scm_url"])
    assert value("EXTENSION_HOMEPAGE").startswith(f"https://github.com/{owner}/{repository}")
    for url in [value("EXTENSION_ICONURL"), *value("EXTENSION_SCREENSHOTURLS").split()]:
        assert url.startswith(f"https://raw.githubusercontent.com/{owner}/{repository}/main/"), url
    contributors = value("EXTENSION_CONTRIBUTORS")
    assert contributors and "contributors" not in contributors.lower(), "name the people or the project's team"
    # The file as the Index formats it: two-space JSON, LF line endings, a final newline.
    text = ENTRY.read_text(encoding="utf-8")
    assert text == json.dumps(metadata, indent=2) + "\n"


def test_homepage_shows_the_screenshots_and_the_licence():
    """What the PR template asks of the homepage (the README): the name, an image, the licence named; and the
    LICENSE file at the root holds the licence pyproject.toml declares."""
    readme = (REPOSITORY / "README.md").read_text(encoding="utf-8")
    assert readme.startswith("# VertebralFracture")
    cmake = (REPOSITORY / "CMakeLists.txt").read_text(encoding="utf-8")
    screenshots = re.search(r'set\(EXTENSION_SCREENSHOTURLS\s*"([^"]+)"\)', cmake).group(1).split()
    shown = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", readme)
    for url in screenshots:
        relative = url.split("/main/", 1)[1]
        assert relative in shown, f"README shows no {relative}"
    assert "Apache-2.0" in readme
    licence = (REPOSITORY / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in licence and "Version 2.0, January 2004" in licence


def test_vendored_files_are_the_pinned_ones():
    """The Index's files are used as published (README of Testing/extensions_index names commit and checksums)."""
    import hashlib

    listed = dict(re.findall(r"\| `([^`]+)` \| [^|]+ \| `([0-9a-f]{64})` \|",
                             (INDEX_FOLDER / "README.md").read_text(encoding="utf-8")))
    assert set(listed) == {"check_description_files.py", "slicer-extension-catalog-entry-schema-v1.0.2.json",
                           "PyTorch.json"}
    for name, digest in listed.items():
        assert hashlib.sha256((INDEX_FOLDER / name).read_bytes()).hexdigest() == digest, name
