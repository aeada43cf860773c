"""Task runners by name: ``threads`` / ``processes`` locally, ``dask`` for more machines.

A stage fans out over batches of studies through one of these runners. The names are the values of
``orchestration.task_runner`` in params.yaml:

* ``threads``   -- :class:`prefect.task_runners.ThreadPoolTaskRunner`; right for I/O-bound work and for
  libraries that release the GIL (nibabel/zlib, pyarrow, torch, TotalSegmentator subprocesses);
* ``processes`` -- :class:`prefect.task_runners.ProcessPoolTaskRunner`; pure-Python CPU work (report
  parsing); the batch function and the items must be picklable (module-level functions);
* ``dask``      -- :class:`prefect_dask.DaskTaskRunner`; a ``distributed.LocalCluster`` with
  ``max_workers`` single-threaded workers, or an existing scheduler at ``dask_address``
  (``tcp://host:8786``) to spread batches over several machines (docs/orchestration.md, "Several
  machines": ``dask scheduler`` on one host, ``dask worker tcp://host:8786 --nthreads 1`` on each).

On a cluster whose workers advertise a ``GPU`` resource (``dask worker ... --nworkers 1 --resources GPU=1``,
one worker per GPU with its own ``CUDA_VISIBLE_DEVICES``), batches tagged ``gpu`` (the segment stage with a
GPU backend) ask for one unit of it, so each GPU runs one batch at a time; without such workers they are
scheduled like any other task (a resource nobody has would leave them waiting forever).
"""

from __future__ import annotations

from typing import Any, Literal

TaskRunnerName = Literal["threads", "processes", "dask"]
TASK_RUNNER_NAMES: tuple[str, ...] = ("threads", "processes", "dask")
GPU_RESOURCE = "GPU"  # the Dask worker resource name of `dask worker --resources GPU=1`
GPU_TAG = "gpu"  # the tag flows.batching gives GPU batches


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
        runner_class = _gpu_aware(DaskTaskRunner)
        if dask_address:
            return runner_class(address=dask_address)
        return runner_class(
            cluster_class="distributed.LocalCluster",
            cluster_kwargs={
                "n_workers": max_workers,
                "threads_per_worker": 1,
                "processes": True,
                "dashboard_address": None,
            },
        )
    raise ValueError(f"unknown task runner {name!r}; choose one of {', '.join(TASK_RUNNER_NAMES)}")


def _gpu_aware(base: type) -> type:
    """``base`` (prefect_dask's DaskTaskRunner) whose ``gpu``-tagged tasks ask the workers' ``GPU`` resource."""

    class GpuAwareDaskTaskRunner(base):  # type: ignore[misc, valid-type]
        """A DaskTaskRunner that submits tasks tagged ``gpu`` with ``resources={"GPU": 1}`` when any worker of
        the cluster advertises that resource (checked once per run)."""

        _gpu_workers: bool | None = None

        def submit(self, task: Any, parameters: dict[str, Any], wait_for: Any = None, dependencies: Any = None) -> Any:
            if GPU_TAG in (getattr(task, "tags", None) or ()) and self._cluster_has_gpus():
                import dask

                with dask.annotate(resources={GPU_RESOURCE: 1}):  # Client.submit merges the annotations in
                    return super().submit(task, parameters, wait_for, dependencies)
            return super().submit(task, parameters, wait_for, dependencies)

        def _cluster_has_gpus(self) -> bool:
            if self._gpu_workers is None:
                workers = self.client.scheduler_info(n_workers=-1).get("workers", {})
                self._gpu_workers = any(GPU_RESOURCE in (info.get("resources") or {}) for info in workers.values())
            return self._gpu_workers

    return GpuAwareDaskTaskRunner
