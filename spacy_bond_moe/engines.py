"""Engines that run a :class:`~.shards.ShardJob` over shards: ``local`` (this machine, 1 or N
processes), ``dask`` (``dask.distributed``: a scheduler address or a LocalCluster) and ``ray``
(Ray Data ``map_batches`` with a callable class: the job's state is built once per actor).

Every engine calls :func:`~.shards.process_shard`, so shard outputs are byte-identical across
engines. Workers must see the input files, the knowledge bases or pipeline and the output folder
under the same paths (a shared file system on a cluster).
"""

import atexit
import logging
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Literal, Optional, Sequence, Tuple

from .shards import (
    Shard,
    ShardJob,
    check_out_dir,
    plan_shards,
    process_shard,
    remove_stale,
    write_manifest,
)

Engine = Literal["local", "dask", "ray"]
ENGINES = ("local", "dask", "ray")
EXTRAS = {"dask": "dask.distributed", "ray": "ray.data"}
Progress = Callable[[Dict[str, Any]], None]


class EngineError(RuntimeError):
    """An engine cannot start (extra not installed, cluster unreachable)."""


def _require(engine: str) -> None:
    try:
        __import__(EXTRAS[engine])
    except ImportError:
        raise EngineError(
            f"--engine {engine} needs the optional dependency: pip install 'spacy-bond-moe[{engine}]'"
        ) from None


def _serial(job: ShardJob, shards: Sequence[Shard], out_dir: str, report: Progress) -> List[Dict[str, Any]]:
    results = []
    for shard in shards:
        results.append(process_shard(job, shard, out_dir))
        report(results[-1])
    return results


def _single_thread_worker() -> None:
    """Each worker process computes with one thread: N processes on N cores without
    oversubscription (torch and OpenMP would each start one thread per core)."""
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


_OPEN: Dict[Tuple[str, Any], Any] = {}  # pools, Dask clusters and Ray started here, reused by later runs


def shutdown() -> None:
    """Close the process pools, Dask clients and clusters, and the local Ray this process
    started (also at exit)."""
    for (kind, _), handle in list(_OPEN.items()):
        if kind == "local":
            handle.shutdown()
        elif kind == "dask":
            client, cluster = handle
            client.close()
            if cluster is not None:
                cluster.close()
        elif kind == "ray":
            handle.shutdown()
    _OPEN.clear()


atexit.register(shutdown)


def run_local(job: ShardJob, shards: Sequence[Shard], out_dir: str, n_process: int,
              report: Progress) -> List[Dict[str, Any]]:
    """In this process (n_process 1) or a pool of fresh ("spawn") processes, one thread each."""
    if n_process <= 1 or len(shards) <= 1:
        return _serial(job, shards, out_dir, report)
    if ("local", n_process) not in _OPEN:
        _OPEN["local", n_process] = ProcessPoolExecutor(
            n_process, mp_context=multiprocessing.get_context("spawn"), initializer=_single_thread_worker
        )
    pool = _OPEN["local", n_process]
    results = []
    futures = [pool.submit(process_shard, job, shard, out_dir) for shard in shards]
    try:
        for future in as_completed(futures):
            results.append(future.result())
            report(results[-1])
    except BrokenProcessPool:
        del _OPEN["local", n_process]
        raise EngineError(f"a worker process died (killed, or out of memory?) after {len(results)} of "
                          f"{len(shards)} shards; finished shards are kept: rerun to resume") from None
    return results


def _dask_client(n_workers: int, scheduler: Optional[str]) -> Any:
    """A client of the cluster at `scheduler`, else of a LocalCluster of `n_workers`
    one-thread processes (no dashboard); kept for later runs of this process."""
    key = ("dask", scheduler or n_workers)
    if key not in _OPEN:
        from dask.distributed import Client, LocalCluster

        cluster = None
        if scheduler is None:
            cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                                   dashboard_address=None, worker_dashboard_address=None,
                                   env={"OMP_NUM_THREADS": "1"})
        try:
            _OPEN[key] = (Client(scheduler or cluster, timeout=60), cluster)
        except OSError as err:
            raise EngineError(f"cannot reach the Dask scheduler {scheduler}: {err}") from None
    return _OPEN[key][0]


def run_dask(job: ShardJob, shards: Sequence[Shard], out_dir: str, n_workers: int,
             scheduler: Optional[str], report: Progress) -> List[Dict[str, Any]]:
    """On the Dask cluster at `scheduler`, else on a local one of `n_workers` processes."""
    _require("dask")
    from dask.distributed import as_completed as dask_completed

    client = _dask_client(n_workers, scheduler)
    futures = client.map(process_shard, [job] * len(shards), shards, [out_dir] * len(shards), pure=False)
    results = []
    for future in dask_completed(futures):
        results.append(future.result())
        report(results[-1])
    return results


class RayShardActor:
    """Ray Data callable class: builds the job's state once per actor, then one shard per row."""

    def __init__(self, job: ShardJob, out_dir: str) -> None:
        _single_thread_worker()
        self.job, self.out_dir = job, out_dir

    def __call__(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        import json

        import numpy

        results = [process_shard(self.job, Shard(**json.loads(row)), self.out_dir) for row in batch["shard"]]
        return {"result": numpy.array([json.dumps(r) for r in results], dtype=object)}


def run_ray(job: ShardJob, shards: Sequence[Shard], out_dir: str, n_workers: int,
            address: Optional[str], report: Progress) -> List[Dict[str, Any]]:
    """Ray Data over the shards with `n_workers` actors, on the cluster at `address` or a local
    Ray (usage statistics off, no dashboard; kept for later runs of this process)."""
    import json

    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    _require("ray")
    import ray

    if not ray.is_initialized():
        try:
            ray.init(address=address, num_cpus=None if address else n_workers, include_dashboard=False,
                     log_to_driver=False, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError) as err:
            raise EngineError(f"cannot start or reach Ray ({address or 'local'}): {err}") from None
        _OPEN["ray", address] = ray
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    items = [{"shard": json.dumps(asdict(shard))} for shard in shards]
    dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        RayShardActor, fn_constructor_kwargs={"job": job, "out_dir": out_dir},
        batch_size=1, concurrency=n_workers, num_cpus=1,
    )
    results = []
    for row in dataset.iter_rows():
        results.append(json.loads(row["result"]))
        report(results[-1])
    return results


def run_engine(engine: Engine, job: ShardJob, shards: Sequence[Shard], out_dir: str, *, n_workers: int = 1,
               address: Optional[str] = None, report: Optional[Progress] = None) -> List[Dict[str, Any]]:
    """Process `shards` with `engine`; `report` is called with each shard's result as it ends."""
    report = report or (lambda result: None)
    if engine == "local":
        return run_local(job, shards, out_dir, n_workers, report)
    if engine == "dask":
        return run_dask(job, shards, out_dir, n_workers, address, report)
    if engine == "ray":
        return run_ray(job, shards, out_dir, n_workers, address, report)
    raise ValueError(f"unknown engine {engine!r}; expected one of {ENGINES}")


@dataclass
class JobReport:
    """What one sharded run did: every shard's result, the manifest, the wall time."""

    results: List[Dict[str, Any]]
    manifest: Path
    seconds: float
    n_stale_removed: int

    def count(self, status: str) -> int:
        return sum(result["status"] == status for result in self.results)

    @property
    def errors(self) -> List[str]:
        return [f"{r['shard']['path']} shard {r['shard']['index']}: {r['error']}"
                for r in sorted(self.results, key=lambda r: r["shard"]["index"]) if r["status"] == "failed"]

    def docs_per_second(self) -> float:
        docs = sum(r["counts"].get("n_docs", 0) for r in self.results if r["status"] == "done")
        return docs / max(self.seconds, 1e-9)

    def format(self) -> str:
        line = (f"{len(self.results)} shards: {self.count('done')} done, {self.count('skipped')} already "
                f"finished, {self.count('failed')} failed; {self.seconds:.1f} s, "
                f"{self.docs_per_second():.0f} docs/s")
        if self.n_stale_removed:
            line += f"; removed {self.n_stale_removed} stale shard file(s)"
        return line


def run_job(job: ShardJob, files: Sequence[Tuple[Path, str]], out_dir: Path, *, shard_size: int,
            engine: Engine = "local", n_workers: int = 1, address: Optional[str] = None,
            progress: bool = False, totals: Optional[Callable[[List[Dict[str, Any]]], Dict[str, Any]]] = None,
            ) -> JobReport:
    """Plan the shards of `files`, run the unfinished ones with `engine`, write the manifest."""
    out = check_out_dir(out_dir)
    planning = time.perf_counter()
    shards = plan_shards(files, shard_size)
    plan_seconds = time.perf_counter() - planning
    removed = remove_stale(out, shards, job)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(shards), desc=f"{job.command} ({engine})", unit=" shards")
    started, docs = time.perf_counter(), 0

    def report(result: Dict[str, Any]) -> None:
        nonlocal docs
        if bar is not None:
            if result["status"] == "done":
                docs += result["counts"].get("n_docs", 0)
            bar.set_postfix_str(f"{docs / max(time.perf_counter() - started, 1e-9):.0f} docs/s")
            bar.update(1)

    try:
        results = run_engine(engine, job, shards, str(out), n_workers=n_workers, address=address,
                             report=report)
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - started
    counts = [r["counts"] for r in results if r["status"] != "failed"]
    timing = {"plan_s": round(plan_seconds, 3), "run_s": round(seconds, 3)}
    manifest = write_manifest(out, job, files, shard_size, results, engine,
                              totals(counts) if totals else {}, timing)
    return JobReport(results, manifest, seconds, removed)
