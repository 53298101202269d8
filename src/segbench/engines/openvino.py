"""OpenVINO engines: openvino-fp32, openvino-bf16, openvino-int8 (CPU).

The artifact is OpenVINO IR (``.xml`` + ``.bin``) converted from the fp32 or
int8 Q/DQ ONNX graph. Precision is chosen at compile time with
``INFERENCE_PRECISION_HINT`` (OpenVINO would otherwise pick bf16 silently on
CPUs with AVX512_BF16), and the precision that really ran is read back.

Loaded in ``"latency"`` mode (the default) the model is compiled with the
LATENCY hint and runs one request at a time. In ``"throughput"`` mode it is
compiled with the THROUGHPUT hint (several CPU streams) and ``infer_stream``
keeps the compiled model's optimal number of requests in flight on an
``AsyncInferQueue``, handing the outputs back in input order. Given the
caller's batch size, throughput mode also fixes a dynamic batch dimension to
it (measured on SegFormer-B0 int8, batch 4 at 512, 2 cores: 30.4 tiles/s
static against 26.2 dynamic), and pads a smaller batch with zeros (the
padding's outputs are dropped); a larger one runs as several. OpenVINO's own
``benchmark_app`` measures the same configurations. For fp32 the static and
dynamic models give identical logits; for int8 OpenVINO picks other kernels
for the static one (SegFormer-B0, untrained: logits differ by up to 0.08,
argmax by 3% of pixels, near-ties), so an int8 engine's labels depend on the
mode, and are identical between ``infer`` and ``infer_stream`` in each.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import closing
from pathlib import Path

import numpy as np

from segbench.engines.base import Runner, check_input_shape, check_tiles, describe_failure, in_order
from segbench.errors import EngineError, InputError, OutputError, RuntimeMissingError, first_line
from segbench.extras import require
from segbench.files import describe_os_error
from segbench.spec import ModelSpec

_HINT = {"fp32": "f32", "int8": "f32", "bf16": "bf16"}


def _compile(xml: Path, precision: str, hint: str = "LATENCY", batch: int | None = None):
    """The compiled model; with ``batch``, a dynamic batch dimension is fixed to it first."""
    ov = require("openvino", f"openvino-{precision}")
    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": _HINT[precision], "PERFORMANCE_HINT": hint}
    try:
        model = core.read_model(str(xml), str(Path(xml).with_suffix(".bin")))
        shape = model.inputs[0].get_partial_shape()
        if batch and shape.rank.is_static and shape[0].is_dynamic:
            shape[0] = batch
            model.reshape({model.inputs[0].get_any_name(): shape})
        return core.compile_model(model, "CPU", config)
    except Exception as exc:
        raise EngineError(f"OpenVINO cannot compile {Path(xml).name}: {first_line(exc)}") from exc


class OpenVinoRunner(Runner):
    """A compiled OpenVINO model behind the Engine contract."""

    runtime = "openvino"
    tunes_for_throughput = True

    @classmethod
    def check(cls, kind) -> None:
        ov = require("openvino", kind.name)
        if kind.precision == "bf16":
            caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
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

    def load_impl(self, artifact: Path) -> None:
        ov = require("openvino", self.name)
        self.device = "cpu"  # the CPU plugin only
        throughput = self.mode == "throughput"
        self._compiled = _compile(artifact, self.kind.precision, self.mode.upper(),
                                  self.batch if throughput else None)
        shape = self._compiled.inputs[0].get_partial_shape()
        check_input_shape([d.get_length() if d.is_static else None for d in shape], self.spec, artifact)
        #: the batch size compiled in by throughput mode (smaller batches padded), else None
        self.fixed_batch = shape[0].get_length() if throughput and self.batch and shape[0].is_static else None
        self._request = None if self.fixed_batch else self._compiled.create_infer_request()
        self._queue = None
        if throughput:
            self.inflight = int(self._compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
            self._queue = ov.AsyncInferQueue(self._compiled, self.inflight)
        #: the precision OpenVINO really executes (f32, bf16, ...)
        self.inference_precision = str(self._compiled.get_property("INFERENCE_PRECISION_HINT"))

    @property
    def config(self) -> str:
        if self._queue is None:
            return "LATENCY"
        return f"THROUGHPUT, {self.inflight} requests" + (f", batch {self.fixed_batch}" if self.fixed_batch
                                                          else "")

    def infer_impl(self, tiles: np.ndarray) -> np.ndarray:
        if self.fixed_batch:  # the compiled batch: padded or split as the stream does
            return list(self.infer_stream([tiles]))[0]
        try:
            self._request.infer({0: tiles}, share_inputs=True)
        except RuntimeError as exc:
            raise EngineError(describe_failure(self.name, tiles, exc)) from exc
        return self._request.get_output_tensor(0).data.copy()

    def infer_stream(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Up to :attr:`inflight` batches on the async queue, outputs in input order (:func:`in_order`).

        A batch's memory is shared with its request (``share_inputs``), and
        :func:`in_order` keeps it referenced until the output is out. The
        callback copies the output out of the request's tensor before the
        request can be reused, and never raises (an exception escaping it
        aborts the process): it reports its error instead. A request that
        fails gets no callback from OpenVINO: its error is read from the
        request once it has ended.
        """
        if self._queue is None:
            yield from super().infer_stream(batches)
            return
        if self._closed:
            raise InputError(f"{self.name} is closed; load the engine again to run it.")
        queue = self._queue
        owner: dict[int, int] = {}  # request id -> the seq it runs (or ran last)
        where: dict[int, int] = {}  # seq -> its request id
        reported: set[int] = set()  # seqs whose callback has reported

        fixed = self.fixed_batch
        plan: deque[list[int]] = deque()  # per batch, the real tiles in each of its requests

        def checked(batches):
            for tiles in batches:
                check_tiles(tiles, self.spec, self.name)
                tiles = np.ascontiguousarray(tiles)
                parts = [tiles[i:i + fixed] for i in range(0, len(tiles), fixed)] if fixed else [tiles]
                plan.append([len(part) for part in parts])  # before its first request can end
                for part in parts:
                    yield _padded(part, fixed) if fixed else part

        def start(seq: int, tiles: np.ndarray, done) -> None:
            if seq == 0:  # set while no request runs: replacing a running one's callback is unsafe
                def on_done(request, seq: int) -> None:
                    try:
                        out = self._output(request, seq)
                    except BaseException as exc:  # noqa: BLE001  (reported, raised in the batch's turn)
                        out = exc
                    reported.add(seq)
                    done(seq, out)

                queue.set_callback(on_done)
            rid = queue.get_idle_request_id()  # the request start_async takes next
            if rid in owner and owner[rid] not in reported:  # its last batch failed: say so first
                done(owner[rid], _error(queue[rid]))
            reported.discard(owner.get(rid, -1))
            owner[rid], where[seq] = seq, rid
            queue.start_async({0: tiles}, seq, share_inputs=True)

        def lost(seq: int) -> BaseException | None:
            rid = where[seq]
            if owner[rid] != seq or not _ended(queue[rid]):
                return None  # running, or reported when its request was reused
            return _error(queue[rid])

        parts: list[np.ndarray] = []
        with closing(in_order(checked(batches), start, self.inflight, lambda: _wait_all(queue),
                              self.name, lost)) as outputs:  # closed (requests waited for) however we end
            for out in outputs:
                sizes = plan[0]
                parts.append(out[:sizes[len(parts)]])
                if len(parts) == len(sizes):
                    plan.popleft()
                    yield parts[0] if len(parts) == 1 else np.concatenate(parts)
                    parts = []

    def _output(self, request, seq: int) -> np.ndarray:
        """The finished request's output, copied out of its tensor (on OpenVINO's thread)."""
        return request.get_output_tensor(0).data.copy()

    def close_impl(self) -> None:
        if self._queue is not None:
            _wait_all(self._queue)
        self._queue = None
        self._request = None
        self._compiled = None


def _padded(tiles: np.ndarray, size: int) -> np.ndarray:
    """``tiles`` with zero tiles appended up to ``size``."""
    if len(tiles) == size:
        return tiles
    return np.concatenate([tiles, np.zeros((size - len(tiles), *tiles.shape[1:]), tiles.dtype)])


def _ended(request) -> bool:
    """True once ``request`` has ended, its callback included (``wait_for`` waits for that too)."""
    try:
        return request.wait_for(0)
    except RuntimeError:  # it failed
        return True


def _error(request) -> BaseException:
    """Why an ended ``request`` reported no output: OpenVINO rethrows its failure from ``wait``."""
    try:
        request.wait()
    except RuntimeError as exc:
        return exc
    return RuntimeError("the request ended without reporting its output")


def _wait_all(queue) -> None:
    """Wait until no request of ``queue`` runs; a failed one's error was reported already."""
    for request in queue:
        try:
            request.wait()
        except RuntimeError:
            pass
