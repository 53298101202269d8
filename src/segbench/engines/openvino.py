"""OpenVINO engines: openvino-fp32, openvino-bf16, openvino-int8 (CPU).

The artifact is OpenVINO IR (``.xml`` + ``.bin``) converted from the fp32 or
int8 Q/DQ ONNX graph. Precision is chosen at compile time with
``INFERENCE_PRECISION_HINT`` (OpenVINO would otherwise pick bf16 silently on
CPUs with AVX512_BF16), and the precision that really ran is read back.

Loaded in ``"latency"`` mode (the default) the model is compiled with the
LATENCY hint and runs one request at a time. In ``"throughput"`` mode it is
compiled with the THROUGHPUT hint (several CPU streams) and ``infer_stream``
keeps the compiled model's optimal number of infer requests running
(``start_async``), waits for them in the order they started and so hands the
outputs back in input order. (A first version used ``AsyncInferQueue`` with a
Python callback; full test runs then segfaulted at random, and a pool of
plain requests needs neither the callback nor a lock.) The requests are leased
from a thread-safe pool, so up to ``inflight`` threads may call ``infer`` at once
(the dynamic batcher's workers do): each call leases one request, and any others
then free for the rest of its batch, and waits while none is free. Given the
caller's batch size, throughput mode also fixes a dynamic batch dimension to
it (measured on SegFormer-B0 int8, batch 4 at 512, 2 cores: 30.4 tiles/s
static against 26.2 dynamic), and pads a smaller batch with zeros (the
padding's outputs are dropped); a larger one runs as several. OpenVINO's own
``benchmark_app`` measures the same configurations. For fp32 the static and
dynamic models give identical logits; for int8 OpenVINO picks other kernels
for the static one (SegFormer-B0, untrained: logits differ by up to 0.08,
argmax by 3% of pixels, near-ties), so an int8 engine's labels depend on the
mode, and are identical between ``infer`` and ``infer_stream`` in each.
Throughput mode leaves the streams' threads unpinned (OpenVINO pins them by
default on Linux): the callers' own threads (the batcher's workers, LoadGen's,
a server's) share the same cores, and a pinned stream whose core such a thread
holds waits for it instead of moving. Measured with
benchmarks/bench_scenarios.py (openvino-int8, SegFormer-B0 at 256, 2 cores,
p99 bound 150 ms): Server 66.0 QPS unpinned against 39-45 pinned; alone,
``benchmark_app -nstreams 2`` runs as fast either way (80-90 tiles/s).
"""

from __future__ import annotations

import contextlib
import functools
import os
import queue
import shutil
import tempfile
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from segbench.engines.base import Runner, check_input_shape, check_tiles, describe_failure
from segbench.errors import EngineError, InputError, OutputError, RuntimeMissingError, first_line
from segbench.extras import require
from segbench.files import describe_os_error
from segbench.spec import ModelSpec

_HINT = {"fp32": "f32", "int8": "f32", "bf16": "bf16"}


@functools.lru_cache(maxsize=1)
def core():
    """The process's one ``ov.Core``, made once and never dropped.

    OpenVINO's CPU plugin gives the thread that makes a Core a signal stack of its own (for AMX's
    larger signal frames) and unmaps it when the Core goes, restoring the previous one only if its
    own is still current. Cores made and dropped out of order (garbage collection does) leave the
    thread with a freed signal stack; the next signal there whose handler runs on it (Python's
    Ctrl-C handler does: CPython installs handlers with SA_ONSTACK) kills the process with SIGSEGV,
    as the kernel cannot write the signal frame. That was the random crash of single-process test
    runs; with one Core there is nothing to drop out of order. The Core is thread-safe.
    """
    return require("openvino", "the OpenVINO engines").Core()


def _compile(xml: Path, precision: str, hint: str = "LATENCY", batch: int | None = None,
             threads: int | None = None):
    """The compiled model; with ``batch``, a dynamic batch dimension is fixed to it first."""
    require("openvino", f"openvino-{precision}")
    core_ = core()
    config = {"INFERENCE_PRECISION_HINT": _HINT[precision], "PERFORMANCE_HINT": hint}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    if hint == "THROUGHPUT":
        config["ENABLE_CPU_PINNING"] = False
    try:
        model = core_.read_model(str(xml), str(Path(xml).with_suffix(".bin")))
        shape = model.inputs[0].get_partial_shape()
        if batch and shape.rank.is_static and shape[0].is_dynamic:
            shape[0] = batch
            model.reshape({model.inputs[0].get_any_name(): shape})
        return core_.compile_model(model, "CPU", config)
    except Exception as exc:
        raise EngineError(f"OpenVINO cannot compile {Path(xml).name}: {first_line(exc)}") from exc


class OpenVinoGraphs:
    """Candidate int8 ONNX graphs compiled by OpenVINO for the CPU as openvino-int8 runs them
    (f32 inference precision, latency hint), for the int8 search."""

    name = "openvino"

    def load(self, graph: Path):
        require("openvino", "openvino-int8")
        compiled = core().compile_model(str(graph), "CPU", {"INFERENCE_PRECISION_HINT": _HINT["int8"],
                                                            "PERFORMANCE_HINT": "LATENCY"})
        request = compiled.create_infer_request()
        output = compiled.outputs[0]
        return lambda tiles: request.infer({0: tiles})[output].copy()


class OpenVinoRunner(Runner):
    """A compiled OpenVINO model behind the Engine contract."""

    runtime = "openvino"
    int8_formats = "openvino"

    @classmethod
    def graph_runtime(cls, kind):
        return OpenVinoGraphs()

    @classmethod
    def check(cls, kind) -> None:
        require("openvino", kind.name)
        if kind.precision == "bf16":
            caps = core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
            if "BF16" not in caps:
                raise RuntimeMissingError(
                    "openvino-bf16 needs a CPU with bf16 support (AVX512_BF16 or AMX); "
                    "use openvino-fp32 or openvino-int8 here."
                )

    @classmethod
    def versions(cls, kind) -> dict[str, str]:
        return {"openvino": require("openvino", kind.name).get_version()}

    @classmethod
    def compile_impl(cls, graph: Path, kind, dest: Path, spec: ModelSpec) -> dict:
        """Convert the ONNX graph to IR (weights kept at their precision) and test-compile it.

        The IR is saved in a temporary folder beside ``dest``; the ``.bin`` is
        moved into place first and the ``.xml`` last, so the artifact is complete
        once its ``.xml`` exists.
        """
        ov = require("openvino", kind.name)
        try:
            model = ov.convert_model(str(graph))
        except Exception as exc:
            raise EngineError(f"OpenVINO cannot convert {graph.name}: {first_line(exc)}") from exc
        staging = Path(tempfile.mkdtemp(prefix=f".{dest.stem}.", dir=dest.parent))
        try:
            xml = staging / dest.name
            ov.save_model(model, str(xml), compress_to_fp16=False)
            compiled = _compile(xml, kind.precision)
            os.replace(xml.with_suffix(".bin"), dest.with_suffix(".bin"))
            os.replace(xml, dest)
        except OSError as exc:
            raise OutputError(describe_os_error(exc, dest)) from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return {"inference_precision": str(compiled.get_property("INFERENCE_PRECISION_HINT"))}

    @classmethod
    def tuned_for(cls, batch: int | None) -> bool:
        return True  # the THROUGHPUT hint, compiled for the batch

    def load_impl(self, artifact: Path) -> None:
        self.device = "cpu"  # the CPU plugin only
        throughput = self.mode == "throughput"
        self._compiled = _compile(artifact, self.kind.precision, self.mode.upper(),
                                  self.batch if throughput else None, self.threads)
        shape = self._compiled.inputs[0].get_partial_shape()
        check_input_shape([d.get_length() if d.is_static else None for d in shape], self.spec, artifact)
        #: the batch size compiled in by throughput mode (smaller batches padded), else None
        self.fixed_batch = shape[0].get_length() if throughput and self.batch and shape[0].is_static else None
        if throughput:
            self.inflight = int(self._compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self._requests = [self._compiled.create_infer_request() for _ in range(self.inflight)]
        self._pool: queue.SimpleQueue = queue.SimpleQueue()  # the requests free now
        for request in self._requests:
            self._pool.put(request)
        self._throughput = throughput
        #: the precision OpenVINO really executes (f32, bf16, ...)
        self.inference_precision = str(self._compiled.get_property("INFERENCE_PRECISION_HINT"))

    @property
    def config(self) -> str:
        if not self._throughput:
            return "LATENCY"
        return f"THROUGHPUT, {self.inflight} requests" + (f", batch {self.fixed_batch}" if self.fixed_batch
                                                          else "")

    def infer_impl(self, tiles: np.ndarray) -> np.ndarray:
        parts = -(-len(tiles) // self.fixed_batch) if self.fixed_batch else 1
        with self._lease(parts) as requests:
            if self.fixed_batch:  # the compiled batch: padded or split as the stream does
                (out,) = self._stream([tiles], requests)
                return out
            (request,) = requests
            try:
                request.infer({0: tiles}, share_inputs=True)
            except RuntimeError as exc:
                raise EngineError(describe_failure(self.name, tiles, exc)) from exc
            return self._output(request)

    @contextlib.contextmanager
    def _lease(self, most: int) -> Iterator[list]:
        """Up to ``most`` requests of the pool for one caller: the first waited for, the others
        only if free now; those still in the list handed back however the caller ends (the caller
        may hand some back earlier, taking them out of the list)."""
        leased = [self._pool.get()]
        with contextlib.suppress(queue.Empty):
            while len(leased) < most:
                leased.append(self._pool.get_nowait())
        try:
            yield leased
        finally:
            for request in leased:
                self._pool.put(request)

    def infer_stream(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Up to :attr:`inflight` requests running at once (those free when it starts), outputs in
        input order.

        Requests are started in input order and waited for in the same order,
        so the oldest one is always the next to hand back, and the request it
        frees takes the next batch: no callbacks, no threads of ours. A batch's
        memory is shared with its request (``share_inputs``) and stays
        referenced until the request has ended. However the stream ends (an
        error, the caller closing it, ``batches`` raising), every running
        request is waited for first.
        """
        if not self._throughput:
            yield from super().infer_stream(batches)
            return
        if self._closed:
            raise InputError(f"{self.name} is closed; load the engine again to run it.")
        with self._lease(self.inflight) as requests:
            yield from self._stream(batches, requests)

    def _stream(self, batches: Iterable[np.ndarray], leased: list) -> Iterator[np.ndarray]:
        """The stream on the ``leased`` requests; once the last part has started, each request that
        ends goes back to the pool at once (another thread's batch takes it: no stream idles while
        this call's last parts run)."""
        free = deque(leased)
        running: deque[tuple] = deque()  # (request, its input, real tiles, last part of its batch)
        parts: list[np.ndarray] = []
        fed = False

        def finish() -> np.ndarray | None:
            """Wait for the oldest request; its batch's output once the batch's last part is in."""
            request, part, real, last = running.popleft()
            try:
                request.wait()
                out = self._output(request)
            except Exception as exc:
                raise EngineError(describe_failure(self.name, part, exc)) from exc
            finally:
                if fed:
                    leased.remove(request)
                    self._pool.put(request)
                else:
                    free.append(request)
            parts.append(out[:real])
            if not last:
                return None
            whole = parts[0] if len(parts) == 1 else np.concatenate(parts)
            parts.clear()
            return whole

        feed = self._parts(batches)
        try:
            while True:
                if not free:  # the next part is pulled only once a request is free for it
                    if (out := finish()) is not None:
                        yield out
                    continue
                if (item := next(feed, None)) is None:
                    fed = True
                    for request in free:  # nothing more to start on them
                        leased.remove(request)
                        self._pool.put(request)
                    free.clear()
                    break
                part, real, last = item
                request = free.popleft()
                try:
                    request.start_async({0: part}, share_inputs=True)
                except RuntimeError as exc:
                    free.append(request)
                    raise EngineError(describe_failure(self.name, part, exc)) from exc
                running.append((request, part, real, last))
            while running:
                if (out := finish()) is not None:
                    yield out
        finally:
            for request, *_ in running:
                with contextlib.suppress(RuntimeError):  # its failure is not the one being raised
                    request.wait()

    def _parts(self, batches: Iterable[np.ndarray]) -> Iterator[tuple[np.ndarray, int, bool]]:
        """Each batch checked, as the requests take it: ``(input, real tiles, last part of the batch)``.

        With a compiled batch size a batch is split into parts of that size, the
        last one padded with zero tiles (their outputs are dropped).
        """
        fixed = self.fixed_batch
        for tiles in batches:
            check_tiles(tiles, self.spec, self.name)
            tiles = np.ascontiguousarray(tiles)
            if not fixed:
                yield tiles, len(tiles), True
                continue
            for i in range(0, len(tiles), fixed):
                part = tiles[i:i + fixed]
                yield _padded(part, fixed), len(part), i + fixed >= len(tiles)

    def _output(self, request) -> np.ndarray:
        """The ended request's output, copied out of its tensor (the request is reused next)."""
        return request.get_output_tensor(0).data.copy()

    def close_impl(self) -> None:
        for request in self._requests:
            with contextlib.suppress(RuntimeError):
                request.wait()
        self._requests = []
        self._compiled = None


def _padded(tiles: np.ndarray, size: int) -> np.ndarray:
    """``tiles`` with zero tiles appended up to ``size``."""
    if len(tiles) == size:
        return tiles
    return np.concatenate([tiles, np.zeros((size - len(tiles), *tiles.shape[1:]), tiles.dtype)])
