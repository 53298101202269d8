"""TensorRT engines (trt-*) and TensorRT for RTX engines (trtrtx-*), one backend for both.

The two libraries share the API's shape (``Builder``, ``OnnxParser``,
``Runtime``, ``IExecutionContext``), so this module is parameterised by the
library: ``tensorrt`` (10.x and 11.x) or ``tensorrt_rtx_bindings``.

Build: a **strongly typed** network parsed from the graph variant that
matches the precision (fp32, fp16 graph, int8 Q/DQ graph): TensorRT 11 and
TensorRT for RTX dropped the fp16/int8 builder flags and the calibrators, so
precision comes from the graph; strong typing works on 10.x as well. One
optimization profile covers batch 1..max with the tiler's batch as the
optimum; the workspace is capped; a timing cache beside the artifacts is
reused across builds (TensorRT for RTX, which builds ahead of time on the
CPU, has none to keep).

Run: ``set_input_shape`` / ``set_tensor_address`` / ``execute_async_v3`` on a
CUDA stream. Device buffers and the stream are CUDA torch tensors and a torch
stream: torch is already a segbench dependency, its caching allocator reuses
buffers across calls, and the GPU tiler can then blend the logits on the
device without copying them back; cuda-python would add a dependency for
nothing here. TensorRT for RTX plans run only on RTX-class GPUs (Ampere,
Ada, Blackwell consumer/workstation parts), not on data-centre Hopper.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segbench.engines.base import Runner, check_tensor
from segbench.errors import EngineError, RuntimeMissingError, SpecError
from segbench.extras import require
from segbench.files import atomic_output
from segbench.spec import ModelSpec

LIBRARIES = {"trt": "tensorrt", "trtrtx": "tensorrt_rtx_bindings"}
MAX_BATCH = 32
OPT_BATCH = 4
WORKSPACE_BYTES = 2 << 30
TIMING_CACHE = "timing.cache"


def _family(kind) -> str:
    return kind.name.split("-", 1)[0]


def library(kind):
    """Import the TensorRT flavour ``kind`` needs, or say how to install it."""
    return require(LIBRARIES[_family(kind)], kind.name)


def _load_timing_cache(config, path: Path):
    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data)
    config.set_timing_cache(cache, False)
    return cache


def _save_timing_cache(config, path: Path) -> None:
    cache = config.get_timing_cache()
    if cache is None:
        return
    with atomic_output(path) as tmp:
        tmp.write_bytes(memoryview(cache.serialize()))


class TensorRTRunner(Runner):
    """A deserialised TensorRT plan behind the Engine contract."""

    runtime = "tensorrt"
    # the symmetric signed Q/DQ graph with float biases, the one TensorRT's parser takes; its
    # accuracy is checked with ONNX Runtime (the default graph runtime), as TensorRT does not run here
    int8_formats = "tensorrt"

    @classmethod
    def check(cls, kind) -> None:
        library(kind)

    @classmethod
    def check_run(cls, kind) -> None:
        """Running a plan needs CUDA too (the builder of TensorRT for RTX runs on the CPU)."""
        library(kind)
        torch = require("torch", f"{kind.name} (for its CUDA buffers)")
        if not torch.cuda.is_available():
            gpu = "an RTX-class NVIDIA GPU" if _family(kind) == "trtrtx" else "an NVIDIA GPU"
            raise RuntimeMissingError(
                f"{kind.name} plans build here but run only on {gpu}, and this machine has none."
            )

    @classmethod
    def versions(cls, kind) -> dict[str, str]:
        trt = library(kind)
        return {trt.__name__: trt.__version__}

    @classmethod
    def build_options(cls, kind) -> dict:
        return {"max_batch": MAX_BATCH, "opt_batch": min(OPT_BATCH, MAX_BATCH),
                "workspace_bytes": WORKSPACE_BYTES}

    @classmethod
    def compile_impl(cls, graph: Path, kind, dest: Path, spec: ModelSpec) -> dict:
        """Parse ``graph`` into a strongly typed network and serialise a plan to ``dest``."""
        options = cls.build_options(kind)
        trt = library(kind)
        logger = trt.Logger(trt.Logger.ERROR)
        builder = trt.Builder(logger)
        flag = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        network = builder.create_network(flag)
        parser = trt.OnnxParser(network, logger)
        # parse_from_file also resolves weights kept in an external .onnx.data file.
        if not parser.parse_from_file(str(graph)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise EngineError(f"{kind.name}: the ONNX parser rejected {graph.name}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options["workspace_bytes"])
        profile = builder.create_optimization_profile()
        inp = network.get_input(0)
        shape = (spec.num_bands, spec.tile, spec.tile)
        profile.set_shape(inp.name, (1, *shape), (options["opt_batch"], *shape),
                          (options["max_batch"], *shape))
        config.add_optimization_profile(profile)
        # TensorRT for RTX builds ahead of time without timing; its cache calls are no-ops.
        cache_path = dest.parent / f"{_family(kind)}-{TIMING_CACHE}"
        cache = _load_timing_cache(config, cache_path) if _family(kind) == "trt" else None
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise EngineError(f"{kind.name}: TensorRT could not build a plan from {graph.name}.")
        with atomic_output(dest) as tmp:
            tmp.write_bytes(memoryview(plan))
        if cache is not None:
            _save_timing_cache(config, cache_path)
        return {"layers": network.num_layers, "plan_bytes": dest.stat().st_size}

    def load_impl(self, artifact: Path) -> None:
        trt = library(self.kind)
        built = (self.spec.build.versions if self.spec.build else {}).get(trt.__name__)
        if built != trt.__version__:
            raise SpecError(
                f"{artifact.name} was built with {trt.__name__} {built or '(unknown)'} but "
                f"{trt.__version__} is installed; rebuild it with 'segbench build --force'."
            )
        self.check_run(self.kind)
        import torch

        self._torch = torch
        self._logger = trt.Logger(trt.Logger.ERROR)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(artifact.read_bytes())
        if self._engine is None:
            raise EngineError(
                f"{artifact.name} is not a plan this TensorRT and GPU can run "
                "(another version, GPU or a corrupt file); rebuild it on this machine."
            )
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self._input = next(n for n in names if self._engine.get_tensor_mode(n) == mode)
        self._output = next(n for n in names if self._engine.get_tensor_mode(n) != mode)
        #: the plan's own limit: the largest batch of its optimization profile
        self.max_batch = int(self._engine.get_tensor_profile_shape(self._input, 0)[2][0])
        self._out_dtype = torch.uint8 if self.spec.output == "labels" else torch.float32
        self._stream = torch.cuda.Stream(device=self.device)
        self.device_tensors = self.spec.output == "logits"
        #: device memory the engine's execution context needs, in bytes
        self.device_memory_bytes = int(getattr(self._engine, "device_memory_size_v2",
                                               getattr(self._engine, "device_memory_size", 0)))

    def infer_tensor(self, tiles):
        """Float32 tiles as a CUDA tensor on the engine's GPU -> its output there (queued on the
        engine's stream, which the caller's current stream then waits for)."""
        check_tensor(tiles, self.spec, self.name, self.device, self.max_batch)
        tiles = tiles.contiguous()
        ctx = self._context
        if not ctx.set_input_shape(self._input, tuple(tiles.shape)):
            raise EngineError(f"{self.name} refuses a batch of shape {tuple(tiles.shape)}: its plan's "
                              f"profile takes 1 to {self.max_batch} tiles.")
        out = self._torch.empty(tuple(ctx.get_tensor_shape(self._output)), dtype=self._out_dtype,
                                device=self.device)
        ctx.set_tensor_address(self._input, tiles.data_ptr())
        ctx.set_tensor_address(self._output, out.data_ptr())
        self._stream.wait_stream(self._torch.cuda.current_stream(self.device))
        if not ctx.execute_async_v3(self._stream.cuda_stream):
            raise EngineError(f"{self.name}: TensorRT failed to enqueue the batch.")
        self._torch.cuda.current_stream(self.device).wait_stream(self._stream)
        return out

    def infer_impl(self, tiles: np.ndarray) -> np.ndarray:
        x = self._torch.from_numpy(tiles).to(self.device, non_blocking=True)
        return self.infer_tensor(x).cpu().numpy()

    def close_impl(self) -> None:
        self._context = None
        self._engine = None
        self._runtime = None
