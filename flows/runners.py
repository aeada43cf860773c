"""Task runners by name: ``threads`` / ``processes`` locally, ``dask`` for more machines.

A stage fans out over batches of studies through one of these runners. The names are the values of
``orchestration.task_runner`` in params.yaml:

* ``threads``   -- :class:`prefect.task_runners.ThreadPoolTaskRunner`; right for I/O-bound work and for
  libraries that release the GIL (nibabel/zlib, pyarrow, torch, TotalSegmentator subprocesses);
* ``processes`` -- :class:`prefect.task_runners.ProcessPoolTaskRunner`; pure-Python CPU work (report
  parsing); the batch function and the items must be picklable (module-level functions);
* ``dask``      -- :class:`prefect_dask.DaskTaskRunner`; a ``distributed.LocalCluster`` with
  ``max_workers`` single-threaded workers, or an existing scheduler at ``dask_address``
  (``tcp://host:8786``) to spread batches over several machines.
"""

from __future__ import annotations

from typing import Any, Literal

TaskRunnerName = Literal["threads", "processes", "dask"]
TASK_RUNNER_NAMES: tuple[str, ...] = ("threads", "processes", "dask")


def make_task_runner(
    name: str,
    max_workers: int = 2,
    *,
    dask_address: str | None = None,
) -> Any:
    """A fresh (not yet started) Prefect task runner for ``name``; raises ValueError on an unknown name."""
    if max_workers < 1:
        raise ValueError(f"max_workers must be >= 1, got {max_workers}")
    if name == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=max_workers)
    if name == "processes":
        from prefect.task_runners import ProcessPoolTaskRunner

        return ProcessPoolTaskRunner(max_workers=max_workers)
    if name == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError as error:  # pragma: no cover - optional extra
            raise ValueError(
                "task_runner 'dask' needs the optional extra: pip install 'fvlm-pipeline[dask]'"
            ) from error
        if dask_address:
            return DaskTaskRunner(address=dask_address)
        return DaskTaskRunner(
            cluster_class="distributed.LocalCluster",
            cluster_kwargs={
                "n_workers": max_workers,
                "threads_per_worker": 1,
                "processes": True,
                "dashboard_address": None,
            },
        )
    raise ValueError(f"unknown task runner {name!r}; choose one of {', '.join(TASK_RUNNER_NAMES)}")
