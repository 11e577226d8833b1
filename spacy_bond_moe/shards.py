"""Sharded corpus processing, independent of the engine that runs it.

An input (a text / JSONL file, a DocBin, or a folder of them) is cut into shards of at most
`shard_size` records: byte ranges of whole lines, or document ranges of a DocBin. A
:class:`ShardJob` (the distant labeller, the annotator) turns one shard into one output file
in the output folder, written atomically, plus a small JSON receipt with the input slice's
SHA-256, the job's fingerprint and the output's SHA-256. A shard whose receipt matches is
skipped, so a killed run resumes where it stopped; a shard that fails is reported with file
and line and leaves the others intact. ``manifest.json`` lists every shard. Memory is bounded
by one shard per worker (a DocBin input is read whole, once per shard that slices it).
"""

import ctypes
import hashlib
import json
import logging
import os
import platform
import re
import resource
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Protocol, Sequence, Tuple

import srsly
from spacy.tokens import DocBin

from .fetch import write_atomic
from .util import InputError

logger = logging.getLogger(__name__)

LINE_FORMATS = ("text", "tokens", "jsonl")
MANIFEST = "manifest.json"
RECEIPT_SUFFIX = ".receipt.json"
SHARD_NAME = re.compile(r"^shard-\d{5,}(\.[a-z]+)+$")  # outputs and receipts
_STATE: Dict[str, Any] = {}  # per-process cache of loaded labellers / pipelines, by fingerprint
MMAP_THRESHOLD, TRIM_THRESHOLD = 2**20, 2**26  # bytes: glibc's thresholds in shard workers (1, 64 MiB)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
_ALLOCATOR: Dict[str, bool] = {}


class ShardError(InputError):
    """Bad input in a shard: names the file and, where known, the line."""


@dataclass(frozen=True)
class Shard:
    """One slice of one input file: records `first`..`stop - 1` (1-based line numbers for line
    formats, 0-based doc indices for DocBins), at bytes `offset`..`offset + length`."""

    index: int
    path: str
    input_format: str
    first: int
    stop: int
    offset: int
    length: int
    sha256: str

    @property
    def name(self) -> str:
        return f"shard-{self.index:05d}"


class ShardJob(Protocol):
    """What an engine runs: picklable settings; the heavy state is built once per process."""

    command: str
    output_suffix: str

    def fingerprint(self) -> str:
        """Changes whenever the output of a shard would change (settings, KBs, model)."""

    def state_key(self) -> str:
        """Jobs with the same key share the per-process state of :meth:`setup`."""

    def settings(self) -> Dict[str, Any]:
        """The settings, as recorded in the manifest."""

    def setup(self) -> Any:
        """Build the per-process state (a labeller, a pipeline)."""

    def run(self, state: Any, shard: Shard) -> Tuple[bytes, Dict[str, Any]]:
        """The output bytes of `shard` and its counts; raise ValueError on bad input."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as file_:
        for block in iter(lambda: file_.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def input_files(input_path: Path, input_format: Optional[str], detect: Any) -> List[Tuple[Path, str]]:
    """`input_path`, or the sorted non-hidden files of a folder, each with its format
    (`input_format`, else `detect(path)`)."""
    input_path = Path(input_path)
    if input_path.is_dir():
        paths = sorted(p for p in input_path.iterdir() if p.is_file() and not p.name.startswith("."))
        if not paths:
            raise ShardError(input_path, "no input files in this folder")
    elif input_path.is_file():
        paths = [input_path]
    else:
        raise ShardError(input_path, "input not found")
    return [(path, input_format or detect(path)) for path in paths]


def _line_shards(path: Path, input_format: str, shard_size: int, start_index: int) -> Iterator[Shard]:
    """Shards of `shard_size` lines; a line ends at b"\\n". Streams the file once."""
    with path.open("rb") as file_:
        offset, number, count, digest = 0, 1, 0, hashlib.sha256()
        index, first, shard_offset = start_index, 1, 0
        for raw in file_:
            digest.update(raw)
            offset += len(raw)
            number += 1
            count += 1
            if count == shard_size:
                yield Shard(index, str(path), input_format, first, number, shard_offset,
                            offset - shard_offset, digest.hexdigest())
                index, count, digest, first, shard_offset = index + 1, 0, hashlib.sha256(), number, offset
        if count:
            yield Shard(index, str(path), input_format, first, number, shard_offset,
                        offset - shard_offset, digest.hexdigest())


def _docbin_shards(path: Path, shard_size: int, start_index: int) -> Iterator[Shard]:
    """Shards of `shard_size` docs of one DocBin (its checksum covers the whole file)."""
    try:
        n_docs = len(DocBin().from_disk(path))
    except (OSError, ValueError) as err:
        raise ShardError(path, f"cannot read DocBin ({err})") from None
    checksum, size = sha256_file(path), path.stat().st_size
    for n, first in enumerate(range(0, n_docs, shard_size)):
        stop = min(first + shard_size, n_docs)
        yield Shard(start_index + n, str(path), "spacy", first, stop, 0, size,
                    hashlib.sha256(f"{checksum}:{first}:{stop}".encode()).hexdigest())


def plan_shards(files: Sequence[Tuple[Path, str]], shard_size: int) -> List[Shard]:
    """The shards of `files` in order; shards never span two files."""
    if shard_size < 1:
        raise ValueError(f"shard size must be >= 1, got {shard_size}")
    shards: List[Shard] = []
    for path, input_format in files:
        path = Path(path).resolve()
        try:
            found = (_docbin_shards(path, shard_size, len(shards)) if input_format == "spacy"
                     else _line_shards(path, input_format, shard_size, len(shards)))
            shards.extend(found)
        except OSError as err:
            raise ShardError(path, f"cannot read input ({err})") from None
    return shards


def shard_lines(shard: Shard) -> Iterator[Tuple[int, str]]:
    """(line number, text) of a line-format shard, checked against its planned checksum; a
    leading byte-order mark is removed; undecodable UTF-8 names the line."""
    path = Path(shard.path)
    try:
        with path.open("rb") as file_:
            file_.seek(shard.offset)
            data = file_.read(shard.length)
    except OSError as err:
        raise ShardError(path, f"cannot read input ({err})") from None
    if hashlib.sha256(data).hexdigest() != shard.sha256:
        raise ShardError(path, f"lines {shard.first}-{shard.stop - 1} changed since the shards were planned")
    for number, raw in enumerate(data.split(b"\n"), start=shard.first):
        if number == shard.stop:  # the empty remainder after the last b"\n"
            break
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ShardError(path, f"not UTF-8 ({err.reason} at byte {err.start})", number) from None
        if number == 1 and text.startswith("\ufeff"):
            text = text[1:]
        yield number, text


def output_path(out_dir: Path, shard: Shard, job: ShardJob) -> Path:
    return Path(out_dir) / f"{shard.name}{job.output_suffix}"


def receipt_path(out_dir: Path, shard: Shard) -> Path:
    return Path(out_dir) / f"{shard.name}{RECEIPT_SUFFIX}"


def finished(out_dir: Path, shard: Shard, job: ShardJob) -> Optional[Dict[str, Any]]:
    """The receipt of `shard` if its output is already there for this job and input."""
    receipt_file, output = receipt_path(out_dir, shard), output_path(out_dir, shard, job)
    try:
        receipt = json.loads(receipt_file.read_text(encoding="utf8"))
    except (OSError, ValueError):
        return None
    if (
        receipt.get("shard") != asdict(shard)
        or receipt.get("fingerprint") != job.fingerprint()
        or not output.is_file()
        or sha256_file(output) != receipt.get("output_sha256")
    ):
        return None
    return receipt


def bound_allocator() -> bool:
    """Fix glibc's mmap and trim thresholds, once per process, unless the
    environment sets them (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_). glibc raises its
    mmap threshold each time a large buffer is freed, so later tensors come from the heap and
    fragment it: a worker's RSS then creeps up shard after shard. With fixed thresholds freed
    buffers go back to the system. True if applied (False without glibc or when overridden)."""
    if "applied" not in _ALLOCATOR:
        applied = False
        overridden = {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"} & set(os.environ)
        if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc" and not overridden:
            libc = ctypes.CDLL(None)
            applied = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and \
                bool(libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
        _ALLOCATOR["applied"] = applied
    return _ALLOCATOR["applied"]


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


def process_shard(job: ShardJob, shard: Shard, out_dir: str) -> Dict[str, Any]:
    """Run `job` on `shard` unless it is finished: output, then receipt, each atomic. Returns
    the receipt with a "status" (done, skipped or failed with "error"). Engines call this."""
    out = Path(out_dir)
    receipt = finished(out, shard, job)
    if receipt is not None:
        return {**receipt, "status": "skipped"}
    key, state_key = job.fingerprint(), job.state_key()
    try:
        started = time.perf_counter()
        bound_allocator()
        if state_key not in _STATE:
            _STATE.clear()  # one labeller or pipeline per process at a time
            _STATE[state_key] = job.setup()
        setup_seconds, started = time.perf_counter() - started, time.perf_counter()
        data, counts = job.run(_STATE[state_key], shard)
        output = output_path(out, shard, job)
        write_atomic(output, data)
        receipt = {
            "shard": asdict(shard), "fingerprint": key, "output": output.name,
            "output_sha256": hashlib.sha256(data).hexdigest(), "output_bytes": len(data), "counts": counts,
            "seconds": round(time.perf_counter() - started, 3), "setup_seconds": round(setup_seconds, 3),
            "worker_pid": os.getpid(), "worker_peak_rss_mb": peak_rss_mb(),
        }
        write_atomic(receipt_path(out, shard), srsly.json_dumps(receipt, indent=2).encode("utf8"))
    except (ValueError, OSError) as err:  # bad input (file:line) or an unwritable output
        return {"shard": asdict(shard), "status": "failed", "error": str(err)}
    except Exception as err:  # noqa: BLE001 - anything else fails this shard alone, named
        first = (str(err).strip().splitlines() or [""])[0][:300]
        return {"shard": asdict(shard), "status": "failed", "error": f"{type(err).__name__}: {first}"}
    return {**receipt, "status": "done"}


def remove_stale(out_dir: Path, shards: Sequence[Shard], job: ShardJob) -> int:
    """Delete shard files and receipts of `out_dir` that are not in the plan (a smaller
    input, another shard size); returns how many were removed."""
    keep = {output_path(out_dir, s, job).name for s in shards} | {receipt_path(out_dir, s).name for s in shards}
    removed = 0
    for path in Path(out_dir).iterdir():
        if SHARD_NAME.match(path.name) and path.name not in keep:
            path.unlink()
            removed += 1
    if removed:
        logger.warning("%s: removed %d stale shard file(s) of an earlier, different run", out_dir, removed)
    return removed


def check_out_dir(out_dir: Path) -> Path:
    """`out_dir` must be a folder (created) that holds no files other than ours."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ShardError(out_dir, "the output must be a folder (sharded output), not a file")
    out_dir.mkdir(parents=True, exist_ok=True)
    foreign = [p.name for p in out_dir.iterdir()
               if not (SHARD_NAME.match(p.name) or p.name == MANIFEST or p.name.startswith("."))]
    if foreign:
        raise ShardError(out_dir, f"output folder holds other files ({', '.join(sorted(foreign)[:3])}): "
                                  "use an empty folder or one written by this command")
    return out_dir


def write_manifest(out_dir: Path, job: ShardJob, files: Sequence[Tuple[Path, str]], shard_size: int,
                   results: Sequence[Dict[str, Any]], engine: str, totals: Dict[str, Any],
                   timing: Dict[str, float]) -> Path:
    """``manifest.json``: the job, the inputs with checksums, every shard's receipt or error,
    the totals and the time spent planning and running."""
    manifest = {
        "command": job.command,
        "engine": engine,
        "settings": job.settings(),
        "fingerprint": job.fingerprint(),
        "shard_size": shard_size,
        "inputs": [{"path": str(Path(p).resolve()), "format": f, "bytes": Path(p).stat().st_size,
                    "sha256": sha256_file(Path(p))} for p, f in files],
        "n_shards": len(results),
        "status": {s: sum(r["status"] == s for r in results) for s in ("done", "skipped", "failed")},
        "totals": totals,
        "timing": timing,
        "shards": sorted(results, key=lambda r: r["shard"]["index"]),
    }
    path = Path(out_dir) / MANIFEST
    write_atomic(path, srsly.json_dumps(manifest, indent=2).encode("utf8") + b"\n")
    return path
