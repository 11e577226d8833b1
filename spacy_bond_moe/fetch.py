"""Fetch the benchmark files (BOND, RoSTER) from commit-pinned URLs or a local mirror.

`DATA_FILES` is the single table of every file: its path relative to the destination
(and to a mirror), MD5, URL, dataset, split and whether the workflow needs it. The
``fetch`` command, the ``assets`` section of ``project.yml`` (see `weasel_assets`) and the
tests all read it. Every file is verified against its MD5 here: weasel's own asset
download only warns on a mismatch.

With the environment variable ``BOND_MOE_DATA_MIRROR`` naming a folder with the same
relative layout (``bond/webpage_distant/train.json``, ``roster/conll/train_text.txt``,
...), files are copied from there and the network is never used.
"""

import hashlib
import os
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

MIRROR_ENV = "BOND_MOE_DATA_MIRROR"
BOND_COMMIT = "32f26988a58ee44eb4f50772c6d6c6eb116c83cf"
ROSTER_COMMIT = "bdbba2df3868d85f55e59958bb04b45f7a668ac6"
BOND_URL = f"https://raw.githubusercontent.com/cliang1453/BOND/{BOND_COMMIT}/dataset"
ROSTER_URL = f"https://raw.githubusercontent.com/yumeng5/RoSTER/{ROSTER_COMMIT}/data"
DOWNLOAD_TIMEOUT = 60.0


@dataclass(frozen=True)
class DataFile:
    """One benchmark file.

    path (str): Location relative to the destination folder and to a mirror.
    md5 (str): Expected MD5 of the file's bytes.
    url (str): Commit-pinned download URL.
    dataset (str): Benchmark it belongs to (`DATASETS`).
    split (str): ``train``/``dev``/``test``, or ``meta`` (tag map, type list).
    required (bool): Needed by the workflow; if False, a missing file is a warning and the
        steps that need it are skipped (e.g. no test split: evaluation uses dev).
    evaluation_only (bool): Gold labels of the training split, for measuring label noise
        only; training never reads them.
    """

    path: str
    md5: str
    url: str
    dataset: str
    split: str
    required: bool = True
    evaluation_only: bool = False

    @property
    def description(self) -> str:
        """One line for weasel's ``assets`` and for messages."""
        kind = "gold train labels, evaluation only (never trained on)" if self.evaluation_only else {
            "train": "distant (noisy) train labels",
            "dev": "gold dev labels",
            "test": "gold test labels",
            "meta": "tag/type inventory",
        }[self.split]
        optional = ", optional" if not self.required else ""
        return f"{self.dataset} {self.split}: {kind}{optional}"


def _bond(dataset: str, split: str, md5: str, required: bool = True) -> DataFile:
    name = "tag_to_id" if split == "meta" else split
    folder = f"{dataset}_distant"
    return DataFile(
        path=f"bond/{folder}/{name}.json",
        md5=md5,
        url=f"{BOND_URL}/{folder}/{name}.json",
        dataset=dataset,
        split=split,
        required=required,
    )


def _roster(name: str, split: str, md5: str, evaluation_only: bool = False) -> DataFile:
    return DataFile(
        path=f"roster/conll/{name}.txt",
        md5=md5,
        url=f"{ROSTER_URL}/conll/{name}.txt",
        dataset="conll03",
        split=split,
        evaluation_only=evaluation_only,
    )


# Sources and checksums: ../shared/datasets/README.md. CoNLL03 trains on RoSTER's text files
# (BOND's conll03_distant/train.json holds the same distant labels but is not mirrored);
# RoSTER's valid_* is the dev split.
DATA_FILES: List[DataFile] = [
    _roster("train_text", "train", "3fbbc71ccc75804c9fe914bbecdb30b5"),
    _roster("train_label_dist", "train", "2232601e9f4d2d7a77c2c79f2e1790ae"),
    # Gold labels of the training sentences: only for measuring the distant labels' noise
    # (label quality). Training never reads this file (converters.ROSTER_FILES uses
    # train_label_dist.txt).
    _roster("train_label_true", "train", "31c592c2a7c8e5c875f1079651c62964", evaluation_only=True),
    _roster("valid_text", "dev", "429c8bc2255bbb51613292ae743f4747"),
    _roster("valid_label_true", "dev", "85cddf5b8017b22fc9ac93c5c29f082c"),
    _roster("test_text", "test", "ce3dda6155d6f602061d08d16751c6cd"),
    _roster("test_label_true", "test", "623bf860ef63c91db769c988b12e8bc6"),
    _roster("types", "meta", "63483faca83e13187221b15169e13306"),
    _bond("conll03", "dev", "e8a78f53d96ad1343d0eb55385f65192"),
    _bond("conll03", "test", "560e3e622a39a2ba5e03bf1238553992"),
    _bond("conll03", "meta", "29a064c669ea6ca25e255541ffdf103a"),
    _bond("twitter", "train", "616fb4de5a67baf2c78c552793b3614f"),
    _bond("twitter", "dev", "cd756bd0395512d448ff3bbc1b09d941"),
    _bond("twitter", "test", "35a4bf1c49dacc957119b95aef4ccaf8"),
    _bond("twitter", "meta", "83a958850b47186a71a7ec5985eb3d05"),
    _bond("webpage", "train", "6dfaafc16a3fc88107673cdedd1bded7"),
    _bond("webpage", "dev", "bb98d680992404729eaff43222f9ee3d"),
    _bond("webpage", "test", "603794cf94d9495050e3819c6d6e96bf"),
    _bond("webpage", "meta", "9ee1a9a527f8d6fa38f0f0b1cfb9c7a6"),
    _bond("wikigold", "train", "a33049a221a65eee9bf4a3fd1474c457"),
    _bond("wikigold", "dev", "7fae3f898dbee6c4d00b25c0b880c555"),
    # Not in the local mirror: without it, convert writes no test.spacy and evaluate uses dev.
    _bond("wikigold", "test", "602b96bf8f0f2c1a328e8ef4524cd19a", required=False),
    _bond("wikigold", "meta", "8987f4c72e477e6d8154d2f95c2e3694"),
]

DATASETS: Tuple[str, ...] = tuple(dict.fromkeys(f.dataset for f in DATA_FILES))

# Folder that `convert` reads for each dataset, relative to the fetch destination.
CONVERT_SOURCES: Dict[str, str] = {
    "conll03": "roster/conll",
    "twitter": "bond/twitter_distant",
    "webpage": "bond/webpage_distant",
    "wikigold": "bond/wikigold_distant",
}

# Statuses of `FileResult`.
PRESENT = "present"  # already at the destination with the right MD5: skipped
COPIED = "copied"  # copied from the mirror, MD5 verified
DOWNLOADED = "downloaded"  # downloaded, MD5 verified
MISSING = "missing"  # not in the mirror / not found at the URL
MISMATCH = "mismatch"  # wrong MD5: nothing written
FAILED = "failed"  # other error (HTTP error, unreadable mirror file, cannot write)
CORRUPT_SUFFIX = ".corrupt"  # a destination file with a wrong MD5 is moved to NAME.corrupt


class FetchError(RuntimeError):
    """The fetch cannot proceed at all (no network and no mirror, bad mirror folder)."""


@dataclass
class FileResult:
    """What happened to one file."""

    file: DataFile
    status: str
    actual_md5: Optional[str] = None
    detail: str = ""
    moved_aside: Optional[Path] = None  # where the destination's corrupt copy now is

    @property
    def ok(self) -> bool:
        """Whether the file is now in place, or may be absent (optional)."""
        if self.status in (PRESENT, COPIED, DOWNLOADED):
            return True
        return self.status == MISSING and not self.file.required

    def message(self) -> str:
        """A one-line report naming the file; a mismatch shows both checksums."""
        aside = (
            f"; the corrupt copy at the destination was moved to {self.moved_aside}"
            if self.moved_aside is not None
            else ""
        )
        return self._message() + aside

    def _message(self) -> str:
        """The report by status, without the note on a moved-aside copy."""
        f = self.file
        if self.status == MISMATCH:
            return (
                f"MD5 mismatch for {f.path}: expected {f.md5}, got {self.actual_md5}"
                f"{self.detail}; the file was not written"
            )
        if self.status == MISSING:
            if f.required:
                return f"missing required file {f.path}{self.detail}"
            consequence = (
                "convert writes no test.spacy and evaluate uses the dev split"
                if f.split == "test"
                else "the steps that need it are skipped"
            )
            return f"missing optional file {f.path}{self.detail}: {consequence}"
        if self.status == FAILED:
            return f"cannot fetch {f.path}: {self.detail}"
        if self.status == PRESENT:
            return f"skipped {f.path}: already present with the expected MD5"
        return f"{self.status}: {f.path}{self.detail}"


def select_files(datasets: Optional[Iterable[str]] = None) -> List[DataFile]:
    """The table's files for `datasets` (all if None or empty), in table order."""
    names = list(datasets or [])
    unknown = [name for name in names if name not in DATASETS]
    if unknown:
        raise FetchError(f"unknown dataset(s) {', '.join(unknown)}; choose from {', '.join(DATASETS)}")
    return [f for f in DATA_FILES if not names or f.dataset in names]


def md5_file(path: Path) -> str:
    """MD5 hex digest of a file's bytes."""
    digest = hashlib.md5(usedforsecurity=False)
    with Path(path).open("rb") as file_:
        for chunk in iter(lambda: file_.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, then move it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with tmp.open("xb") as file_:
            file_.write(data)
            file_.flush()
            os.fsync(file_.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def download(url: str, timeout: float = DOWNLOAD_TIMEOUT) -> bytes:
    """Return the body at `url`; raises `urllib.error.URLError`/`OSError` (no network, HTTP error)."""
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (fixed https URLs)
        return response.read()


def _no_network_message(url: str, err: BaseException) -> str:
    reason = getattr(err, "reason", None) or err
    return (
        f"Cannot download {url} ({reason}). No network? Set the environment variable "
        f"{MIRROR_ENV} to a folder holding the files in the same layout (e.g. "
        f"{MIRROR_ENV}=../shared/datasets, with bond/webpage_distant/train.json, "
        f"roster/conll/train_text.txt, ...) to copy them from there without the network."
    )


def _fetch_one(file: DataFile, target: Path, mirror: Optional[Path]) -> FileResult:
    """Copy or download one file, verify its MD5 and move it into place."""
    if mirror is not None:
        source = mirror / file.path
        where = f" (from {source})"
        if not source.is_file():
            return FileResult(file, MISSING, detail=f" (not in the mirror {mirror})")
        try:
            data = source.read_bytes()
        except OSError as err:
            return FileResult(file, FAILED, detail=f"cannot read {source} ({err})")
        status = COPIED
    else:
        where = f" (from {file.url})"
        try:
            data = download(file.url)
        except urllib.error.HTTPError as err:
            if err.code == 404:
                return FileResult(file, MISSING, detail=f" (HTTP 404 at {file.url})")
            return FileResult(file, FAILED, detail=f"HTTP {err.code} at {file.url}")
        except (urllib.error.URLError, OSError) as err:
            raise FetchError(_no_network_message(file.url, err)) from err
        status = DOWNLOADED
    actual = hashlib.md5(data, usedforsecurity=False).hexdigest()
    if actual != file.md5:
        return FileResult(file, MISMATCH, actual_md5=actual, detail=where)
    try:
        write_atomic(target, data)
    except OSError as err:
        return FileResult(file, FAILED, actual_md5=actual, detail=f"cannot write {target} ({err})")
    return FileResult(file, status, actual_md5=actual, detail=where)


def _refetch_corrupt(
    file: DataFile, target: Path, existing: str, mirror: Optional[Path], log: Callable[[str], None]
) -> FileResult:
    """Move `target` (MD5 `existing`, wrong) aside to NAME.corrupt and fetch it again; the
    aside copy is deleted once a verified file is in place, else kept and named."""
    aside = target.with_name(target.name + CORRUPT_SUFFIX)
    problem = f"{target} has MD5 {existing}, expected {file.md5}"
    try:
        os.replace(target, aside)
    except OSError as err:
        detail = f"{problem} and cannot be moved aside ({err}): it is still there"
        return FileResult(file, FAILED, existing, detail)
    log(f"{problem}: moved it to {aside}, fetching it again")
    result = _fetch_one(file, target, mirror)
    if result.status in (COPIED, DOWNLOADED):
        aside.unlink(missing_ok=True)
    else:
        result.moved_aside = aside
    return result


def fetch_files(
    files: Sequence[DataFile],
    dest: Path,
    mirror: Optional[Path] = None,
    log: Callable[[str], None] = lambda line: None,
) -> List[FileResult]:
    """Put `files` under `dest`, from `mirror` if given, else from their URLs.

    Files already at the destination with the right MD5 are skipped; one with a wrong MD5
    is moved aside to ``NAME.corrupt`` and fetched again (the aside copy is deleted once a
    good one is in place), so no file with a wrong MD5 stays at a destination path. Nothing
    whose MD5 is wrong is ever written. Raises `FetchError` when the mirror is not a folder
    or the network is unreachable (HTTP 404 = missing file).
    """
    dest = Path(dest)
    if mirror is not None:
        mirror = Path(mirror)
        if not mirror.is_dir():
            raise FetchError(f"{MIRROR_ENV}={mirror}: not a folder")
    results: List[FileResult] = []
    for file in files:
        target = dest / file.path
        existing = md5_file(target) if target.is_file() else None
        if existing is None:
            result = _fetch_one(file, target, mirror)
        elif existing == file.md5:
            result = FileResult(file, PRESENT, actual_md5=existing)
        else:
            result = _refetch_corrupt(file, target, existing, mirror, log)
        results.append(result)
        log(result.message())
    return results


def mirror_from_env() -> Optional[Path]:
    """The mirror folder named by ``BOND_MOE_DATA_MIRROR`` (None if unset or empty)."""
    value = os.environ.get(MIRROR_ENV, "").strip()
    return Path(value) if value else None


def weasel_assets(dest: str = "assets") -> List[Dict[str, str]]:
    """The ``assets`` entries of ``project.yml`` for every file of the table."""
    return [
        {"dest": f"{dest}/{f.path}", "url": f.url, "checksum": f.md5, "description": f.description}
        for f in DATA_FILES
    ]


if __name__ == "__main__":  # print the `assets:` block of project.yml
    import srsly

    print(srsly.yaml_dumps({"assets": weasel_assets()}))
