"""The bundle archive's checks (edge/deploy/archive.py), unit by unit: the signed manifest's rules and limits,
and what each archive member must be. The whole read, on real archives, is tests/deploy/test_bundles.py's."""
from __future__ import annotations

import tarfile

import pytest

from edge.deploy.archive import BundleManifest, FileEntry, Limits, _expected_entry, path_problem, version_of
from edge.deploy.common import BundleError

SHA = "a" * 64
HINT = "Hint: make bundles with `edge bundle pack`; if this one was, copy it again from its source"
UNCHANGED = "Note: nothing was extracted outside the staging directory; the active bundle is unchanged"
MANIFEST = FileEntry("det/manifest.json", 10, SHA)


def manifest(*files: FileEntry, version: str = "1.0", models: tuple[str, ...] = ("det",)) -> BundleManifest:
    return BundleManifest(version, "2026-12-06T10:00:00Z", {m: [] for m in models}, [], files)


def refused(call) -> str:
    with pytest.raises(BundleError) as info:
        call()
    return info.value.render()


VERSION = "is not a PEP 440 version of 1 to 64 letters, digits, '.', '_', '+' or '-'"
VERSION_HINT = "Hint: a bundle's version is a PEP 440 version that only increases, e.g. 2026.11.2"


@pytest.mark.parametrize("version", ["1 0", "demo-1", "", "1.0/2", "1." + "0" * 63, "2026.11.2-é"])
def test_a_version_that_is_not_pep_440_is_refused(version: str) -> None:
    assert refused(lambda: manifest(MANIFEST, version=version).check(Limits())) == (
        f"bundle.json is not valid: version {version!r} {VERSION}\n{VERSION_HINT}; pack it again with one")
    assert refused(lambda: version_of(version)) == f"bundle version {version!r} {VERSION}\n{VERSION_HINT}"


@pytest.mark.parametrize("lower, higher", [("1.9", "1.10"), ("2026.11.2", "2026.12.0"), ("2.0rc1", "2.0"),
                                           ("2.0", "2.0.post1"), ("1.0.dev3", "1.0a1"), ("v1.0", "1.0.1"),
                                           ("1.0+local", "1.0.1")])
def test_versions_are_ordered_as_pep_440_orders_them(lower: str, higher: str) -> None:
    assert version_of(lower) < version_of(higher)
    manifest(MANIFEST, version=higher).check(Limits())


def test_equal_versions_are_one_version() -> None:
    assert version_of("2.0") == version_of("2.0.0") == version_of("v2.0")


def test_every_problem_is_named_the_first_five_after_the_first_in_the_note() -> None:
    broken = manifest(MANIFEST, MANIFEST, FileEntry("other/a.onnx", 5, "zz"), FileEntry("det/b", -1, SHA),
                      version="v/1", models=("det", "../x"))
    assert refused(lambda: broken.check(Limits())) == (
        f"bundle.json is not valid: version 'v/1' {VERSION}\n"
        "Note: model name '../x' is not a plain name; file 'other/a.onnx' is not in a model's directory (det, ../x);"
        " file 'other/a.onnx': sha256 'zz' is not 64 hex digits; file 'det/b': size -1 is not a byte count;"
        " 'det/manifest.json' is listed twice\n"       # the 7th, ../x's missing manifest, is left out
        + VERSION_HINT + "; pack it again with one")


@pytest.mark.parametrize("files, total", [(3, 100), (2, 100), (3, 99)])
def test_a_bundle_at_its_limits_passes(files: int, total: int) -> None:
    entries = [MANIFEST, *(FileEntry(f"det/f{i}", 1, SHA) for i in range(files - 2)),
               FileEntry("det/rest", total - 10 - (files - 2), SHA)]
    manifest(*entries).check(Limits(members=3, total_bytes=100))


@pytest.mark.parametrize("entries, numbers", [
    ([MANIFEST, *(FileEntry(f"det/f{i}", 1, SHA) for i in range(3))], "4 files, 13 bytes"),
    ([MANIFEST, FileEntry("det/big", 91, SHA)], "2 files, 101 bytes"),
], ids=["files", "bytes"])
def test_a_bundle_over_its_limits_is_refused_with_both(entries: list[FileEntry], numbers: str) -> None:
    assert refused(lambda: manifest(*entries).check(Limits(members=3, total_bytes=100))) == (
        f"bundle is too large: {numbers}\nNote: limits: 3 files, 100 bytes\n"
        "Hint: pack fewer models or variants per bundle")


def member(name: str, kind: bytes = tarfile.REGTYPE, size: int = 10, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = kind, size, linkname
    return info


EXPECTED = {MANIFEST.path: MANIFEST}


@pytest.mark.parametrize("item, taken, rendered", [
    (member("det/l", tarfile.SYMTYPE, linkname="/etc/passwd"), set(),
     "the archive holds a symbolic link 'det/l' -> '/etc/passwd': bundles hold regular files only\n"
     f"{UNCHANGED}\n{HINT}"),
    (member("det/../", tarfile.DIRTYPE, 0), set(),
     f"unsafe path in the archive: 'det/../' (path traversal ('..'))\n{UNCHANGED}\n{HINT}"),
    (member("/etc/x"), set(), f"unsafe path in the archive: '/etc/x' (absolute path)\n{UNCHANGED}\n{HINT}"),
    (member("det/x"), set(), f"file 'det/x' in the archive is not in the signed manifest\n{HINT}"),
    (member("det/manifest.json"), {"det/manifest.json"},
     f"file 'det/manifest.json' in the archive comes twice\n{HINT}"),
    (member("det/manifest.json", size=11), set(),
     f"checksum mismatch: det/manifest.json is 11 bytes in the archive, the signed manifest says 10\n{HINT}"),
], ids=["symlink", "directory with ..", "absolute", "unsigned", "twice", "size"])
def test_each_member_that_is_not_as_signed_is_refused_with_why(item: tarfile.TarInfo, taken: set[str],
                                                               rendered: str) -> None:
    assert refused(lambda: _expected_entry(item, EXPECTED, taken)) == rendered


def test_a_signed_file_is_its_entry_and_a_directory_is_passed_over() -> None:
    assert _expected_entry(member("det/manifest.json"), EXPECTED, set()) is MANIFEST
    assert _expected_entry(member("det/", tarfile.DIRTYPE, 0), EXPECTED, set()) is None    # "det/": its slash


LONGEST = "det/" + "/".join(["a" * 200] * 5) + "/" + "b" * 15               # 1024 characters, parts of 200


@pytest.mark.parametrize("name, problem", [
    ("", "empty name"), ("det/a\x1fb", "control characters or backslashes in the name"),
    ("det/a\x7fb", "control characters or backslashes in the name"),
    ("det\\a", "control characters or backslashes in the name"), ("/det/a", "absolute path"),
    ("det/../a", "path traversal ('..')"), ("det//a", "not a normalized path (empty or '.' component)"),
    ("det/./a", "not a normalized path (empty or '.' component)"), (LONGEST + "b", "name too long"),
    ("det/" + "é" * 128, "name too long"),                                   # 256 bytes in one component
    ("det/a b", None), (LONGEST, None), ("det/" + "é" * 127 + "a", None),   # 1024 characters; 255 bytes
])
def test_each_unsafe_name_says_why_and_the_edges_pass(name: str, problem: str | None) -> None:
    assert path_problem(name) == problem


def test_each_entry_problem_names_its_file() -> None:
    entries = [MANIFEST, FileEntry("det/empty", 0, SHA), FileEntry("det/max", 100, SHA)]
    manifest(*entries).check(Limits(member_bytes=100))                       # 0 bytes, and exactly the limit
    for entry, problem in [(FileEntry("det/flag", True, SHA), "file 'det/flag': size True is not a byte count"),
                           (FileEntry("det/big", 101, SHA), "file 'det/big' of 101 bytes is over the limit of 100"
                                                              " per file")]:
        assert refused(lambda entry=entry: manifest(MANIFEST, entry).check(Limits(member_bytes=100))).startswith(
            f"bundle.json is not valid: {problem}\n")
    assert refused(lambda: manifest(FileEntry("x/a", 1, SHA), models=()).check(Limits())).startswith(
        "bundle.json is not valid: file 'x/a' is not in a model's directory (no models)\n")
