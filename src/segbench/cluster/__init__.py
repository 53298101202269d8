"""Scenes in chunks on dask.distributed (the 'cluster' extra): see :mod:`segbench.cluster.segment`."""

from segbench.cluster.segment import (
    check_chunk_files,
    check_resources,
    check_workers,
    dask_client,
    segment_on_cluster,
    worker_peaks,
)

__all__ = ["check_chunk_files", "check_resources", "check_workers", "dask_client", "segment_on_cluster",
           "worker_peaks"]
