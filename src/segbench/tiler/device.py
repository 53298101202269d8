"""The tiler's blending and argmax on the engine's device, in torch: only uint8 rasters come back.

For an engine that takes and returns tensors on its device (``infer_tensor``:
the torch engines, ONNX Runtime's CUDA provider with I/O binding), the raw
tiles go to the device once per batch (on CUDA from pinned host memory, on a
copy stream of their own, so a batch's copy overlaps the inference of the one
before it), the logits are blended into a row band that lives on the device,
and the argmax (and confidence, probabilities) are taken there: only the
finished rows come back, as uint8. The host-side validity masks stay on the
host and are applied to those rows.

The arithmetic is the native CPU loops' own (:mod:`segbench._native`):
``acc += logits * outer(wy, wx)`` as one fused multiply-add per element
(``addcmul_``), the weight sum as the same products, the first maximum
winning ties (``argmax``); so on the same logits the labels equal the CPU
tiler's bit for bit. Written once against torch tensors, it runs on ``cpu``
in CI and on ``cuda`` on a GPU machine.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from segbench.errors import InputError
from segbench.extras import require
from segbench.raster import CONFIDENCE_SCALE, PROBABILITY_SCALE
from segbench.tiler.accumulate import non_finite, open_span
from segbench.tiler.windows import Window


def runs_on_device(engine, on_device: bool | None) -> bool:
    """Whether the tiler blends on the engine's device: by default for an engine off the CPU that
    returns device tensors; ``on_device=True`` asks for it (e.g. a torch engine on ``cpu``)."""
    able = engine.device_tensors and engine.spec.output == "logits"
    if on_device and not able:
        raise InputError(f"{engine.name} cannot return logits as tensors on its device, so the tiler "
                         "cannot blend there; run it without on_device.")
    if on_device is None:
        return able and not str(engine.device).startswith("cpu")
    return bool(on_device)


def host_batches(device: str) -> Callable[[tuple[int, ...]], np.ndarray] | None:
    """How the reader allocates its batches for ``device``: pinned host memory for CUDA (the copy
    to the GPU then runs asynchronously), None (plain numpy) otherwise.

    Torch's caching host allocator keeps a pinned block from reuse until the
    copies recorded on it have finished, so each batch may be a fresh tensor.
    """
    if not device.startswith("cuda"):
        return None
    torch = require("torch", "the device tiler")

    def allocate(shape: tuple[int, ...]) -> np.ndarray:
        return torch.empty(shape, dtype=torch.float32, pin_memory=True).numpy()

    return allocate


def device_stream(engine, batches: Iterable[np.ndarray]) -> Iterator:
    """The engine's device outputs for host ``batches``, in order; each batch copied to the device
    (on CUDA on a copy stream, so the copy of one batch overlaps the inference of another)."""
    torch = require("torch", "the device tiler")
    device = torch.device(engine.device)
    if device.type != "cuda":
        for pixels in batches:
            yield engine.infer_tensor(torch.from_numpy(pixels))
        return
    copy = torch.cuda.Stream(device)
    # Host batches whose copy may still be running, with the event that marks its end: a batch
    # wrapped by from_numpy is not the caching host allocator's own tensor, so the allocator
    # cannot see the copy; holding the batch keeps its pinned block from reuse until then.
    copying: deque = deque()
    try:
        for pixels in batches:
            while copying and copying[0][0].query():
                copying.popleft()
            host = torch.from_numpy(pixels)
            compute = torch.cuda.current_stream(device)
            with torch.cuda.stream(copy):
                x = host.to(device, non_blocking=True)
                done = torch.cuda.Event()
                done.record(copy)
            copying.append((done, pixels))
            compute.wait_stream(copy)
            x.record_stream(compute)  # its device memory is not reused before the engine has read it
            yield engine.infer_tensor(x)
    finally:
        copy.synchronize()


class DeviceAccumulator:
    """:class:`~segbench.tiler.accumulate.BandAccumulator` with its row band on a torch device.

    ``add`` takes the window's logits as a tensor on the device (the weight
    vectors and the validity mask as numpy arrays, as the writer has them);
    ``flush`` returns numpy uint8 rows exactly as the CPU accumulator does.
    """

    def __init__(self, device: str, height: int, width: int, classes: int, tile: int, nodata: int,
                 confidence: bool = False, probabilities: bool = False, engine: str = "the engine") -> None:
        torch = require("torch", "the device tiler")
        self._torch = torch
        self.engine = engine
        self.device = torch.device(device)
        self.height, self.width, self.nodata = height, width, nodata
        self.confidence, self.probabilities = confidence, probabilities
        rows = min(tile, height)
        self._acc = torch.zeros((classes, rows, width), dtype=torch.float32, device=self.device)
        self._wsum = torch.zeros((rows, width), dtype=torch.float32, device=self.device)
        self._valid = np.zeros((rows, width), bool)  # host: the reader made it there
        self._weights: dict[tuple[str, int], object] = {}  # axis weight vectors, copied once each
        # windows with NaN or infinite logits, counted on the device (no sync per window) and checked
        # at each flush, which waits for the device anyway; the first such window, for the sentence
        self._non_finite = torch.zeros((), dtype=torch.int64, device=self.device)
        self._windows: list[Window] = []  # blended since the last flush
        self.top = 0

    def _on_device(self, axis: str, start: int, weights: np.ndarray):
        key = (axis, start)
        if key not in self._weights:
            self._weights[key] = self._torch.from_numpy(np.ascontiguousarray(weights)).to(self.device)
        return self._weights[key]

    def add(self, window: Window, output, wy: np.ndarray, wx: np.ndarray, valid: np.ndarray) -> None:
        """Blend one window's logits ``(C, t, t)`` (a device tensor) with weights ``outer(wy, wx)``."""
        y, x, h, w = open_span(window, self.top, self._wsum.shape[0], self.height, self.width)
        wy_t, wx_t = self._on_device("y", window.row, wy), self._on_device("x", window.col, wx)
        weight = wy_t[:h, None] * wx_t[None, :w]
        logits = output[:, :h, :w]
        if logits.dtype != self._torch.float32:
            logits = logits.float()
        self._non_finite += (~self._torch.isfinite(logits)).any()
        self._windows.append(window)
        self._acc[:, y:y + h, x:x + w].addcmul_(logits, weight)
        self._wsum[y:y + h, x:x + w] += weight
        self._valid[y:y + h, x:x + w] |= valid[:h, :w]

    def flush(self, upto: int) -> tuple[int, np.ndarray, np.ndarray | None, np.ndarray | None] | None:
        """Finish rows ``[top, upto)``: ``(row0, labels, confidence or None, probabilities or None)``."""
        torch = self._torch
        n = min(upto, self.height) - self.top
        if n <= 0:
            return None
        if self._non_finite.item():
            raise non_finite(self.engine, self._windows[0], exact=False)
        self._windows.clear()
        row0 = self.top
        acc, wsum = self._acc[:, :n], self._wsum[:n]
        blended = wsum > 0
        labels = torch.where(blended, acc.argmax(dim=0), self.nodata).to(torch.uint8)
        conf = probs = None
        if self.confidence:
            inv = torch.where(blended, 1.0 / wsum, 0.0)
            z = torch.exp(acc * inv - acc.amax(dim=0) * inv).sum(dim=0)
            conf = torch.where(blended, (float(CONFIDENCE_SCALE) / z + 0.5).to(torch.uint8), 0)
        if self.probabilities:
            logits = acc / torch.where(blended, wsum, 1.0)
            p = torch.softmax(logits, dim=0)
            probs = torch.where(blended, torch.round(PROBABILITY_SCALE * p), self.nodata).to(torch.uint8)
        valid = self._valid[:n]
        labels = np.where(valid, labels.cpu().numpy(), self.nodata).astype(np.uint8)
        if conf is not None:
            conf = np.where(valid, conf.cpu().numpy(), 0).astype(np.uint8)
        if probs is not None:
            probs = np.where(valid, probs.cpu().numpy(), self.nodata).astype(np.uint8)
        self._shift(n)
        return row0, labels, conf, probs

    def finish(self) -> tuple[int, np.ndarray, np.ndarray | None, np.ndarray | None] | None:
        """Flush every remaining row."""
        return self.flush(self.height)

    def _shift(self, n: int) -> None:
        """Move the rows below the flushed ``n`` up, and clear the tail."""
        rows = self._wsum.shape[0]
        for buf in (self._acc, self._wsum):
            if n < rows:
                buf[..., : rows - n, :] = buf[..., n:, :].clone()
            buf[..., max(rows - n, 0):, :] = 0
        if n < rows:
            self._valid[: rows - n] = self._valid[n:]
        self._valid[max(rows - n, 0):] = False
        self.top += n
