"""OpenVINO engines: openvino-fp32, openvino-bf16, openvino-int8 (CPU).

The artifact is OpenVINO IR (``.xml`` + ``.bin``) converted from the fp32 or
int8 Q/DQ ONNX graph. Precision is chosen at compile time with
``INFERENCE_PRECISION_HINT`` (OpenVINO would otherwise pick bf16 silently on
CPUs with AVX512_BF16), and the precision that really ran is read back.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from segbench.engines.base import Runner, check_input_shape
from segbench.errors import EngineError, OutputError, RuntimeMissingError, first_line
from segbench.extras import require
from segbench.files import describe_os_error
from segbench.spec import ModelSpec

_HINT = {"fp32": "f32", "int8": "f32", "bf16": "bf16"}


def _compile(xml: Path, precision: str):
    ov = require("openvino", f"openvino-{precision}")
    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": _HINT[precision], "PERFORMANCE_HINT": "LATENCY"}
    try:
        model = core.read_model(str(xml), str(Path(xml).with_suffix(".bin")))
        return core.compile_model(model, "CPU", config)
    except Exception as exc:
        raise EngineError(f"OpenVINO cannot compile {Path(xml).name}: {first_line(exc)}") from exc


class OpenVinoRunner(Runner):
    """A compiled OpenVINO model behind the Engine contract."""

    runtime = "openvino"

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
        self.device = "cpu"  # the CPU plugin only
        self._compiled = _compile(artifact, self.kind.precision)
        shape = self._compiled.inputs[0].get_partial_shape()
        check_input_shape([d.get_length() if d.is_static else None for d in shape], self.spec, artifact)
        self._request = self._compiled.create_infer_request()
        #: the precision OpenVINO really executes (f32, bf16, ...)
        self.inference_precision = str(self._compiled.get_property("INFERENCE_PRECISION_HINT"))

    def infer_impl(self, tiles: np.ndarray) -> np.ndarray:
        self._request.infer({0: tiles}, share_inputs=True)
        return self._request.get_output_tensor(0).data.copy()

    def close_impl(self) -> None:
        self._request = None
        self._compiled = None
