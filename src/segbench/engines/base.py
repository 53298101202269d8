"""The Engine contract, and the Runner base class every backend subclasses.

In the spirit of Polygraphy's runners (``polygraphy/backend/base/runner.py``):
the base class owns the lifecycle and checks inputs once; a backend only
fills in small template methods.

Build side (class methods, no engine loaded): ``check`` (can this machine
build the kind?), ``check_run`` (can it also run it?), ``versions`` (what the
build record names), ``build_options`` (settings recorded in the spec and
part of the build's cache key) and ``compile_impl`` (graph variant ->
artifact).

Run side (an instance is a loaded engine): ``load_impl`` when created,
``infer_impl`` on inputs already checked, ``close_impl`` once; ``with
Runner(...) as engine:`` closes it on exit. ``infer_stream`` runs batches back
to back (the tiler): one by one here, several in flight where a backend can
(OpenVINO loaded in ``"throughput"`` mode, ONNX Runtime's streams for single
tiles: :func:`overlapped`), the outputs always in input order.
A backend whose engines set ``device_tensors`` also has ``infer_tensor``:
torch tensors on the engine's device in and out, no host round trip. An
engine whose runtime bounds the batch (a TensorRT plan) sets ``max_batch``;
the base refuses a larger batch in one sentence, and the batch sweep and the
tiler never send one.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from segbench.errors import InputError, SpecError
from segbench.spec import ModelSpec


@runtime_checkable
class Engine(Protocol):
    """A loaded, ready-to-run segmentation engine: everything the tiler, the batch sweep and the
    bench use of one, declared (as Polygraphy's ``BaseRunner`` does), never probed for.

    ``infer`` takes raw pixels ``(N, bands, tile, tile)`` float32 (normalization
    is baked into the graph) and returns ``(N, classes, tile, tile)`` float32
    logits, or ``(N, tile, tile)`` uint8 labels when ``spec.output == "labels"``.
    :class:`EngineBase` gives every member but ``infer`` its default.
    """

    name: str  # "ort-fp32", "openvino-int8", "torch-fp32", "trt-fp16", ...
    spec: ModelSpec
    device: str  # "cpu", "cuda:0"
    max_batch: int | None  # the most tiles one call takes (a TensorRT plan's profile); None: any
    inflight: int  # batches infer_stream keeps in flight; threads that may call infer at once
    device_tensors: bool  # has infer_tensor: torch tensors on its device in and out
    device_memory_bytes: int | None  # the device memory it holds, where it measures it
    inference_precision: str | None  # the precision that really runs, where the runtime says

    def infer(self, tiles: np.ndarray) -> np.ndarray: ...

    def infer_stream(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]: ...

    def close(self) -> None: ...


class EngineBase:
    """The defaults of :class:`Engine`'s members: one batch at a time, on the host, any batch size.
    :class:`Runner` builds on it; so can any engine-like object (tests, benchmarks)."""

    max_batch: int | None = None
    inflight: int = 1
    device_tensors: bool = False
    device_memory_bytes: int | None = None
    inference_precision: str | None = None

    def infer(self, tiles: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def infer_stream(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """The outputs of ``batches`` in their order: here one ``infer`` call after another."""
        for tiles in batches:
            yield self.infer(tiles)

    def close(self) -> None:
        """Release what the engine holds."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()


#: how a caller means to run an engine: one call at a time (latency), or batches back to back
MODES = ("latency", "throughput")


def infer_stream(engine: Engine, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """The outputs of ``batches``, in their order (the engine's own stream: several in flight where
    it can)."""
    return engine.infer_stream(batches)


def overlapped(infer: Callable[[np.ndarray], np.ndarray], batches: Iterable[np.ndarray],
               inflight: int) -> Iterator[np.ndarray]:
    """``infer`` on ``batches`` from ``inflight`` threads, at most that many batches in flight, the
    outputs in input order (for an engine whose ``infer`` several threads may call at once). However
    the stream ends (an error, the caller closing it, ``batches`` raising), the running calls are
    waited for first."""
    running: deque[Future] = deque()
    with ThreadPoolExecutor(inflight, thread_name_prefix="infer-stream") as pool:
        try:
            for tiles in batches:
                if len(running) == inflight:
                    yield running.popleft().result()
                running.append(pool.submit(infer, tiles))
            while running:
                yield running.popleft().result()
        finally:
            wait(running)


def describe_failure(name: str, tiles: np.ndarray, exc: BaseException) -> str:
    """One sentence for a failed batch; the message's last line says why (runtimes put it there)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    why = lines[-1] if lines else type(exc).__name__
    return f"{name} failed on a batch of shape {tuple(tiles.shape)}: {why.rstrip('.')}."


class Runner(EngineBase):
    """A loaded engine of one backend; subclasses implement the ``*_impl`` methods."""

    #: the runtime's import name, for messages and availability
    runtime: ClassVar[str] = ""
    #: whose int8 graph the runtime's int8 engine compiles (a key of
    #: ``segbench.export.quantize.CANDIDATES``); None where it has no int8 engine
    int8_formats: ClassVar[str | None] = None

    def __init__(self, artifact: Path, spec: ModelSpec, kind, device: str | None = None,
                 mode: str = "latency", batch: int | None = None, threads: int | None = None) -> None:
        self.name: str = kind.name
        #: CPU threads the runtime may use (None: its default, every core); read by ``load_impl``
        self.threads = threads
        #: "latency" or "throughput" (see :data:`MODES`); read by ``load_impl``
        self.mode = mode
        #: the batch size the caller means to send, where it said (a backend may compile for it)
        self.batch = batch
        #: batches ``infer_stream`` keeps in flight, and how many threads may call ``infer`` at once
        self.inflight = 1
        self.spec = spec
        self.kind = kind
        self.device: str = device or ("cuda:0" if kind.device == "cuda" else "cpu")
        self.artifact = Path(artifact)
        #: seconds the last ``infer`` call took (the runner times itself)
        self.last_inference_time: float | None = None
        self._closed = False
        self.load_impl(self.artifact)

    # -- build side ------------------------------------------------------
    @classmethod
    def check(cls, kind) -> None:
        """Raise RuntimeMissingError when this machine cannot build ``kind``."""

    @classmethod
    def check_run(cls, kind) -> None:
        """Raise RuntimeMissingError when this machine can build but not run ``kind``."""

    @classmethod
    def versions(cls, kind) -> dict[str, str]:
        """Library versions recorded in the build record."""
        return {}

    @classmethod
    def build_options(cls, kind) -> dict[str, Any]:
        """Settings recorded in the build record; a build with other settings is rebuilt."""
        return {}

    @classmethod
    def graph_runtime(cls, kind):
        """Runs candidate int8 graphs as this runtime would, for the search that chooses among
        them (a ``segbench.export.qualify.GraphRuntime``); ONNX Runtime on the CPU by default."""
        from segbench.export.quantize import OrtGraphs

        return OrtGraphs()

    @classmethod
    def compile(cls, graph: Path, kind, dest: Path, spec: ModelSpec) -> dict[str, Any]:
        """Compile ``graph`` into the artifact ``dest``; returns what the build record keeps."""
        return {**cls.build_options(kind), **(cls.compile_impl(graph, kind, dest, spec) or {})}

    @classmethod
    def compile_impl(cls, graph: Path, kind, dest: Path, spec: ModelSpec) -> dict[str, Any]:
        raise NotImplementedError

    # -- run side --------------------------------------------------------
    def load_impl(self, artifact: Path) -> None:
        raise NotImplementedError

    def infer_impl(self, tiles: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def close_impl(self) -> None:
        """Release the runtime's objects."""

    def infer(self, tiles: np.ndarray) -> np.ndarray:
        """Raw pixels ``(N, bands, tile, tile)`` float32 -> logits (or labels); see :class:`Engine`."""
        if self._closed:
            raise InputError(f"{self.name} is closed; load the engine again to run it.")
        check_tiles(tiles, self.spec, self.name, self.max_batch)
        start = time.perf_counter()
        out = self.infer_impl(np.ascontiguousarray(tiles))
        self.last_inference_time = time.perf_counter() - start
        return out

    def infer_stream(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """The outputs of ``batches`` in their order, at most :attr:`inflight` batches in flight.

        Here one ``infer`` call after another; a backend that can overlap
        requests overrides it. Pulling the next batch may raise (the caller's
        feed stopping): an override still waits for its requests then.
        """
        yield from super().infer_stream(batches)

    @classmethod
    def batch_limit(cls, spec: ModelSpec) -> int | None:
        """The most tiles per call an engine of this build takes, from its build record, before it
        is loaded (the batch sweep's bound); None: any."""
        limit = (spec.build.options if spec.build else {}).get("max_batch")
        return int(limit) if limit else None

    @classmethod
    def tuned_for(cls, batch: int | None) -> bool:
        """True where loading with ``mode="throughput"`` for ``batch`` gives another engine than a
        latency load (then a latency figure and a throughput figure need two loads, and each batch size
        its own); False: one load serves every batch."""
        return False

    @property
    def config(self) -> str:
        """How this engine was compiled to run, for reports ("LATENCY", "THROUGHPUT, 2 requests")."""
        return "one request at a time"

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.close_impl()


def check_tiles(tiles: Any, spec: ModelSpec, name: str, max_batch: int | None = None) -> None:
    """Refuse a batch that is not ``(N >= 1, bands, tile, tile)`` float32, or larger than
    ``max_batch``, in one sentence."""
    want = (spec.num_bands, spec.tile, spec.tile)
    if not isinstance(tiles, np.ndarray) or tiles.dtype != np.float32 or tiles.ndim != 4 \
            or tiles.shape[1:] != want or not len(tiles):
        got = f"{tiles.dtype} {tiles.shape}" if isinstance(tiles, np.ndarray) else type(tiles).__name__
        raise InputError(f"{name} takes float32 tiles of shape (N, {', '.join(map(str, want))}), "
                         f"not {got}.")
    check_batch(len(tiles), name, max_batch)


def check_batch(batch: int, name: str, max_batch: int | None) -> None:
    """One sentence for a batch larger than the engine takes."""
    if max_batch is not None and batch > max_batch:
        raise InputError(f"{name} takes at most {max_batch} tiles per batch (it was built for that), "
                         f"not {batch}; give --batch {max_batch} or less.")


def check_tensor(x: Any, spec: ModelSpec, name: str, device: str, max_batch: int | None = None) -> None:
    """Refuse a tensor batch that is not ``(N >= 1, bands, tile, tile)`` float32 on ``device``, or
    larger than ``max_batch``."""
    want = (spec.num_bands, spec.tile, spec.tile)
    shape = tuple(getattr(x, "shape", ()))
    dtype, where = str(getattr(x, "dtype", type(x).__name__)), str(getattr(x, "device", "?"))
    if dtype != "torch.float32" or len(shape) != 4 or shape[1:] != want or not shape[0] \
            or where.split(":")[0] != device.split(":")[0]:
        raise InputError(f"{name} takes float32 tensors of shape (N, {', '.join(map(str, want))}) on "
                         f"{device}, not {dtype} {shape} on {where}.")
    check_batch(shape[0], name, max_batch)


def check_input_shape(shape: Sequence, spec: ModelSpec, artifact: Path) -> None:
    """Refuse an artifact whose input is not (batch, spec bands, spec tile, spec tile)."""
    want = [spec.num_bands, spec.tile, spec.tile]
    got = list(shape)[1:]
    if len(shape) != 4 or any(isinstance(g, int) and g != w for g, w in zip(got, want, strict=True)):
        raise SpecError(
            f"{Path(artifact).name} takes input {list(shape)} but its spec says "
            f"(N, {spec.num_bands}, {spec.tile}, {spec.tile}); the spec belongs to another model."
        )
