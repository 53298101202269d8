"""Scenes given as URLs: a COG served over HTTP (with range requests) on 127.0.0.1."""

from __future__ import annotations

import http.server
import io
import re
import subprocess
import sys
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.shutil

from tests.conftest import make_spec, tiny_conv_onnx, write_scene

SEGBENCH = Path(sys.executable).with_name("segbench")


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """A static file server that honours ``Range: bytes=a-b``, as COG readers need."""

    ranges: list[str] = []
    paths: list[str] = []  # every path asked for

    def send_head(self):
        RangeHandler.paths.append(self.path)
        wanted = self.headers.get("Range")
        if not wanted:
            return super().send_head()
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return None
        data = path.read_bytes()
        first, last = re.fullmatch(r"bytes=(\d+)-(\d*)", wanted).groups()
        first, last = int(first), min(int(last) if last else len(data) - 1, len(data) - 1)
        RangeHandler.ranges.append(wanted)
        self.send_response(206)
        self.send_header("Content-Type", "image/tiff")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Range", f"bytes {first}-{last}/{len(data)}")
        self.send_header("Content-Length", str(last - first + 1))
        self.end_headers()
        return io.BytesIO(data[first:last + 1])

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A COG scene on a local HTTP server: (its URL, the same file on disk, an engine)."""
    pytest.importorskip("onnxruntime")
    from segbench.engines.registry import build

    root = tmp_path_factory.mktemp("served")
    pixels = np.random.default_rng(4).integers(1, 256, (3, 300, 260), np.uint8)
    plain = write_scene(root / "plain.tif", pixels)
    rasterio.shutil.copy(plain, root / "scene.tif", driver="COG", BLOCKSIZE=256)
    engine = build(tiny_conv_onnx(root / "m.onnx", make_spec(tile=64)), "ort-fp32", root)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(RangeHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root / "scene.tif", engine
    server.shutdown()


def _segment(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(SEGBENCH), "segment", *args], capture_output=True, text=True, timeout=300)


def test_a_cog_over_http_segments_like_the_local_file(served, tmp_path):
    base, local, engine = served
    RangeHandler.ranges.clear()
    remote = _segment(f"{base}/scene.tif", "--engine", str(engine), "-o", str(tmp_path / "out"),
                      "--batch", "2")
    assert remote.returncode == 0, remote.stderr
    assert RangeHandler.ranges  # read in ranges, not downloaded whole
    here = _segment(str(local), "--engine", str(engine), "-o", str(tmp_path / "local.tif"), "--batch", "2")
    assert here.returncode == 0, here.stderr
    with rasterio.open(tmp_path / "out" / "scene.labels.tif") as a, \
            rasterio.open(tmp_path / "local.tif") as b:
        np.testing.assert_array_equal(a.read(1), b.read(1))
        assert a.crs == b.crs and a.transform == b.transform


@pytest.mark.parametrize("where", ["missing", "unreachable"])
def test_a_url_that_cannot_be_read_is_one_sentence(served, tmp_path, where):
    base, _, engine = served
    url = f"{base}/nowhere.tif" if where == "missing" else "http://127.0.0.1:9/scene.tif"
    done = _segment(url, "--engine", str(engine), "-o", str(tmp_path / "labels.tif"), "--batch", "2")
    assert done.returncode == 1
    assert done.stderr.startswith(f"segbench: error: Could not read {url}: ") and done.stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_gdal_options_for_urls_stay_out_of_the_environment(served):
    """GDAL_DISABLE_READDIR_ON_OPEN is set per open, in GDAL's thread-local configuration: never in
    os.environ, which reader threads would write while GDAL's threads read it (a glibc race)."""
    import os

    from segbench.raster import open_raster

    base, _, _ = served
    before = dict(os.environ)
    RangeHandler.paths.clear()
    with open_raster(f"{base}/scene.tif") as ds:
        assert ds.read(1, window=((0, 10), (0, 10))).shape == (10, 10)
    assert dict(os.environ) == before
    assert set(RangeHandler.paths) == {"/scene.tif"}  # no folder listing, no sidecar probed
