"""``segbench serve`` against a real uvicorn server process on 127.0.0.1, with a real ONNX engine:
tiles equal to ``segment``'s labels warped to the tile, jobs equal to ``segment``'s output, the
security and bad-input cases, SIGTERM during a job."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from segbench.engines.registry import build  # noqa: E402
from segbench.serve.tiles import decode_png_indices  # noqa: E402
from segbench.spec import IGNORE_INDEX  # noqa: E402
from segbench.workflow import SegmentOptions, segment_scenes  # noqa: E402
from tests.conftest import blob_scene, make_spec, tiny_conv_onnx, write_scene  # noqa: E402
from tests.test_url_scenes import RangeHandler  # noqa: E402

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
START_S = 60.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A ``segbench serve`` process on a free loopback port."""

    def __init__(self, engine: Path, roots: list[Path], jobs: Path, *extra: str) -> None:
        self.port = _free_port()
        self.log = jobs.parent / f"server-{self.port}.log"
        args = [sys.executable, "-m", "segbench.cli", "serve", str(engine), "--scenes", *map(str, roots),
                "--port", str(self.port), "--jobs", str(jobs), *extra]
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"
        self.client = httpx.Client(base_url=self.url, timeout=30)
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited: {self.log.read_text()}")
            try:
                if self.client.get("/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        raise RuntimeError(f"the server did not start: {self.log.read_text()}")

    def stop(self) -> int:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The engine, a scene root (a scene, a non-GeoTIFF, a symlink out) and a file outside it."""
    tmp = tmp_path_factory.mktemp("serve")
    spec = make_spec(bands=3, classes=4, tile=32)
    engine = build(tiny_conv_onnx(tmp / "model.onnx", spec), "ort-fp32", tmp / "engines")
    root = tmp / "scenes"
    root.mkdir()
    blob_scene(root / "a.tif", size=256)
    (root / "sub").mkdir()
    (root / "notatiff.tif").write_text("this is not a GeoTIFF\n")
    outside = tmp / "secret"
    outside.mkdir()
    blob_scene(outside / "secret.tif", size=64)
    (root / "link.tif").symlink_to(outside / "secret.tif")
    (root / "sub" / "out").symlink_to(outside)
    return {"tmp": tmp, "engine": engine, "root": root, "outside": outside}


@pytest.fixture(scope="module")
def server(world):
    srv = Server(world["engine"], [world["root"]], world["tmp"] / "jobs", "--token", TOKEN)
    yield srv
    srv.stop()


def _segment(world, out: Path) -> np.ndarray:
    segment_scenes([world["root"] / "a.tif"], world["engine"], out, SegmentOptions(batch=4))
    with rasterio.open(out) as ds:
        return ds.read(1)


def _wait_job(client, job_id: str, until=("done", "failed", "cancelled", "interrupted"), limit=60.0) -> dict:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        state = client.get(f"/jobs/{job_id}", headers=AUTH).json()
        if state["status"] in until:
            return state
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} still {state['status']} after {limit} s")


def _tile_of(scene: dict, z: int) -> str:
    """``x/y`` of the tile at zoom ``z`` under the scene's centre."""
    import morecantile

    west, south, east, north = scene["bounds"]
    t = morecantile.tms.get("WebMercatorQuad").tile((west + east) / 2, (south + north) / 2, z)
    return f"{t.x}/{t.y}"


def _warp_to_tile(labels_path: Path, bounds, fill=IGNORE_INDEX, nodata=IGNORE_INDEX) -> np.ndarray:
    from rasterio.transform import from_bounds
    from rasterio.warp import Resampling, reproject

    out = np.full((256, 256), fill, np.uint8)
    with rasterio.open(labels_path) as ds:
        reproject(ds.read(1), out, src_transform=ds.transform, src_crs=ds.crs, src_nodata=nodata,
                  dst_transform=from_bounds(*bounds, 256, 256), dst_crs="EPSG:3857",
                  dst_nodata=nodata, resampling=Resampling.nearest)
    return out


def test_tiles_agree_with_segment_warped_to_the_tile(world, server):
    import morecantile

    labels = world["tmp"] / "segment-a.tif"
    _segment(world, labels)
    interior = world["tmp"] / "interior.tif"  # 1 at least 3 pixels from the scene's edge
    with rasterio.open(labels) as ds:
        inner = np.zeros((ds.height, ds.width), np.uint8)
        inner[3:-3, 3:-3] = 1
        profile = ds.profile | {"driver": "GTiff", "nodata": None}
    with rasterio.open(interior, "w", **profile) as ds:
        ds.write(inner, 1)
    scene = next(s for s in server.client.get("/scenes", headers=AUTH).json() if s["name"] == "a.tif")
    tms = morecantile.tms.get("WebMercatorQuad")
    agree = total = 0
    for z in (scene["minzoom"], scene["minzoom"] + 1, scene["minzoom"] + 2):
        for t in list(tms.tiles(*scene["bounds"], [z]))[:6]:
            r = server.client.get(f"/tiles/{scene['id']}/{z}/{t.x}/{t.y}.png", headers=AUTH)
            assert r.status_code == 200 and r.headers["content-type"] == "image/png", r.text
            got = decode_png_indices(r.content)
            b = tms.xy_bounds(t)
            want = _warp_to_tile(labels, (b.left, b.bottom, b.right, b.top))
            keep = _warp_to_tile(interior, (b.left, b.bottom, b.right, b.top), fill=0) == 1
            assert (got[want == IGNORE_INDEX] == IGNORE_INDEX).all()  # transparent outside the scene
            agree += int((got[keep] == want[keep]).sum())
            total += int(keep.sum())
    assert total > 50_000
    assert agree / total >= 0.99, agree / total
    print(f"tile agreement with segment: {agree / total:.5f} of {total} pixels")


def test_scenes_tilejson_and_metrics(world, server):
    c = server.client
    scenes = c.get("/scenes", headers=AUTH).json()
    assert [s["name"] for s in scenes] == ["a.tif"]  # not the text file, not the symlink out
    west, south, east, north = scenes[0]["bounds"]
    assert 14.9 < west < east < 15.1 and 52.3 < south < north < 52.4  # UTM 33N, WGS84
    tj = c.get(scenes[0]["tilejson"].replace(server.url, ""), headers=AUTH).json()
    assert tj["tiles"][0].endswith("/{z}/{x}/{y}.png") and tj["minzoom"] <= tj["maxzoom"]
    assert [e["name"] for e in tj["legend"]] == ["class0", "class1", "class2", "class3"]
    text = c.get("/metrics", headers=AUTH).text
    for name in ("segbench_request_seconds_bucket", "segbench_tiles_served_total", "segbench_batches_total",
                 "segbench_batcher_queue_depth", "segbench_jobs"):
        assert name in text
    z = scenes[0]["minzoom"] + 1
    t = f"/tiles/{scenes[0]['id']}/{z}/{_tile_of(scenes[0], z)}.png"
    first = c.get(t, headers=AUTH | {"Origin": "http://example.org"})
    assert first.status_code == 200 and first.headers["access-control-allow-origin"] == "*"
    again = c.get(t, headers=AUTH | {"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304 and again.headers["etag"] == first.headers["etag"]
    conf = c.get(t + "?layer=confidence", headers=AUTH)
    assert conf.status_code == 200 and conf.headers["etag"] != first.headers["etag"]
    assert decode_png_indices(conf.content).max() > 255 // 4  # max probability of 4 classes, as grey
    assert c.get(t + "?layer=nonsense", headers=AUTH).status_code == 422
    cached = c.get(t, headers=AUTH)  # from the disk cache this time
    assert cached.content == first.content
    assert "segbench_tile_cache_hits_total 0" not in c.get("/metrics", headers=AUTH).text
    preflight = c.options(t, headers={"Origin": "http://example.org", "Access-Control-Request-Method": "GET",
                                      "Access-Control-Request-Headers": "authorization"})
    assert preflight.status_code == 200  # a browser's preflight needs no token


def test_job_equals_segment_and_is_deleted(world, server):
    c = server.client
    r = c.post("/jobs", json={"scene": "a.tif"}, headers=AUTH)
    assert r.status_code == 202, r.text
    state = _wait_job(c, r.json()["id"])
    assert state["status"] == "done" and state["done"] == state["total"] > 0, state
    r = c.get(f"/jobs/{state['id']}/labels.tif", headers=AUTH)
    assert r.status_code == 200
    got_path = world["tmp"] / "job-labels.tif"
    got_path.write_bytes(r.content)
    want = _segment(world, world["tmp"] / "segment-b.tif")
    with rasterio.open(got_path) as ds, rasterio.open(world["tmp"] / "segment-b.tif") as ref:
        assert ds.profile == ref.profile and ds.tags(ns="IMAGE_STRUCTURE") == ref.tags(ns="IMAGE_STRUCTURE")
        np.testing.assert_array_equal(ds.read(1), want)
    folder = world["tmp"] / "jobs" / state["id"]
    assert (folder / "out" / "labels.qml").is_file() and not (folder / "work").exists()
    scene = c.get("/scenes", headers=AUTH).json()[0]  # coarse zooms: from the job's label COG
    coarse_url = f"/tiles/{scene['id']}/{scene['minzoom'] - 3}/{_tile_of(scene, scene['minzoom'] - 3)}.png"
    coarse = c.get(coarse_url, headers=AUTH)
    assert coarse.status_code == 200 and "etag" not in coarse.headers
    shown = set(np.unique(decode_png_indices(coarse.content)))
    assert shown <= {0, 1, 2, 3, IGNORE_INDEX} and len(shown) >= 3
    assert c.delete(f"/jobs/{state['id']}", headers=AUTH).status_code == 204
    coarse = c.get(coarse_url, headers=AUTH)
    assert coarse.status_code == 404 and "POST /jobs" in coarse.json()["detail"]
    assert not folder.exists() and c.get(f"/jobs/{state['id']}", headers=AUTH).status_code == 404


def test_a_scene_that_is_not_a_geotiff_fails_its_job_in_one_sentence(server):
    r = server.client.post("/jobs", json={"scene": "notatiff.tif"}, headers=AUTH)
    assert r.status_code == 202
    state = _wait_job(server.client, r.json()["id"])
    assert state["status"] == "failed" and "\n" not in state["error"] and state["error"].endswith(".")
    assert server.client.get(f"/jobs/{state['id']}/labels.tif", headers=AUTH).status_code == 404


def test_token_on_every_route_but_healthz(server):
    c = server.client
    assert c.get("/healthz").status_code == 200
    for path in ("/scenes", "/metrics", "/jobs", "/tiles/x/18/1/1.png", "/scenes/x/tilejson.json"):
        assert c.get(path).status_code == 401
        assert c.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get(path, headers={"Authorization": TOKEN}).status_code == 401
    assert c.post("/jobs", json={"scene": "a.tif"}).status_code == 401
    # HTTP Basic with the token as the password (any user): what QGIS 3.22 and curl -u send
    assert c.get("/scenes", auth=("anyone", TOKEN)).status_code == 200
    assert c.get("/scenes", auth=(TOKEN, "wrong")).status_code == 401
    for bad in ("Basic !!!", "Basic " + base64.b64encode(b"no-colon").decode(), "Basic"):
        assert c.get("/scenes", headers={"Authorization": bad}).status_code == 401


@pytest.mark.parametrize("scene", [
    "../secret/secret.tif", "sub/../../secret/secret.tif", "link.tif", "sub/out/secret.tif",
    "%2e%2e/secret/secret.tif", "..%2fsecret%2fsecret.tif", "/etc/passwd", "", "a.tif\x00.png",
])
def test_jobs_read_nothing_outside_the_roots(world, server, scene):
    if scene == "/etc/passwd":
        scene = str(world["outside"] / "secret.tif")  # absolute, outside the roots
    r = server.client.post("/jobs", json={"scene": scene}, headers=AUTH)
    assert 400 <= r.status_code < 500, r.text
    assert "secret" not in json.dumps(server.client.get("/jobs", headers=AUTH).json())


@pytest.mark.parametrize("path,status", [
    ("/tiles/{id}/0/0/0.png", 404),            # far coarser than the scene: 404 with a hint
    ("/tiles/{id}/99/0/0.png", 404),           # finer than any zoom
    ("/tiles/{id}/{z}/0/0.png", 404),          # a tile far from the scene
    ("/tiles/{id}/{z}/-1/5.png", 404),
    ("/tiles/{id}/{z}/99999999999/5.png", 404),
    ("/tiles/{id}/{z}/abc/5.png", 422),
    ("/tiles/{id}/{z}/1.5/5.png", 422),
    ("/tiles/{id}/x/1/5.png", 422),
    ("/tiles/nosuchscene/18/1/1.png", 404),
    ("/tiles/..%2F..%2Fsecret/18/1/1.png", 404),
    ("/scenes/..%2Fsecret%2Fsecret.tif/tilejson.json", 404),
    ("/scenes/%2e%2e/tilejson.json", 404),
    ("/jobs/..%2F..%2Fetc", 404),
    ("/jobs/../../etc/passwd", 404),
])
def test_bad_tile_and_path_requests_are_4xx(server, path, status):
    c = server.client
    scene = c.get("/scenes", headers=AUTH).json()[0]
    r = c.get(path.format(id=scene["id"], z=scene["minzoom"] + 1), headers=AUTH)
    assert r.status_code == status, r.text
    if path.startswith("/tiles/{id}/0/"):
        assert "zoom in" in r.json()["detail"]


def test_bad_job_bodies_are_4xx(server):
    c = server.client
    assert c.post("/jobs", content=b"x" * 100_000, headers=AUTH).status_code == 413
    assert c.post("/jobs", content=b"not json", headers=AUTH).status_code == 422
    assert c.post("/jobs", json={"scene": "a.tif", "more": 1}, headers=AUTH).status_code == 422
    assert c.post("/jobs", json={"scene": 3}, headers=AUTH).status_code == 400
    assert c.post("/jobs", json=["a.tif"], headers=AUTH).status_code == 422
    r = c.post("/jobs", json={"scene": "http://169.254.169.254/latest/meta-data"}, headers=AUTH)
    assert r.status_code == 400 and "--allow-urls" in r.json()["detail"]
    assert c.post("/jobs", json={"scene": "file:///etc/passwd"}, headers=AUTH).status_code == 400


def test_binds_loopback_by_default(server):
    import psutil

    from segbench.cli import build_parser

    assert build_parser().parse_args(["serve", "e.onnx", "--scenes", "d"]).host == "127.0.0.1"
    listening = {c.laddr for c in psutil.Process(server.proc.pid).net_connections("inet")
                 if c.status == psutil.CONN_LISTEN}
    assert listening and {a.ip for a in listening} == {"127.0.0.1"}


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_during_a_job_marks_it_interrupted(world, tmp_path, workers):
    root = tmp_path / "big"
    root.mkdir()
    # long enough that SIGTERM lands mid-job: at 2048^2 the job sometimes ended while uvicorn's
    # supervisor passed the signal on (1 run in 4 to 8 with --workers 2)
    patch = np.random.default_rng(0).integers(0, 256, (3, 256, 256), dtype=np.uint8)
    write_scene(root / "big.tif", np.tile(patch, (1, 16, 16)))
    jobs = tmp_path / "jobs"
    srv = Server(world["engine"], [root], jobs, "--max-jobs", "1", "--workers", str(workers))
    try:
        r = srv.client.post("/jobs", json={"scene": "big.tif"})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        assert srv.client.post("/jobs", json={"scene": "big.tif"}).status_code == 429  # bounded
        deadline = time.monotonic() + 30
        while srv.client.get(f"/jobs/{job_id}").json()["done"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        state = srv.client.get(f"/jobs/{job_id}").json()
        assert state["status"] == "running" and 0 < state["done"] < state["total"], state
        import psutil

        if workers > 1:  # uvicorn's supervisor and its worker processes
            assert len(psutil.Process(srv.proc.pid).children(recursive=True)) >= workers
    finally:
        code = srv.stop()
    state = json.loads((jobs / job_id / "state.json").read_text())
    assert state["status"] == "interrupted", state
    # uvicorn's supervisor of --workers exits 0 after it stops its workers on SIGTERM
    assert code == (128 + signal.SIGTERM if workers == 1 else 0)
    left = [p.name for p in (jobs / job_id).rglob("*")]
    assert left == ["state.json"], left  # nothing under a final name, no work folder


def test_missing_extra_is_one_sentence_exit_3(tmp_path):
    code = ("import sys; sys.modules['fastapi'] = None; from segbench.cli import main; "
            "sys.exit(main(['serve', 'e.onnx', '--scenes', '.']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env=os.environ | {"PYTHONWARNINGS": "ignore"})
    assert r.returncode == 3
    assert r.stderr.strip().count("\n") == 0 and "segbench[serve]" in r.stderr


@pytest.fixture(scope="module")
def open_server(world):
    """A server without a token that takes URLs from 127.0.0.1, its job folder holding a job that
    finished two hours ago (expired at start with --keep-jobs 1h)."""
    jobs = world["tmp"] / "jobs-open"
    old = jobs / ("0" * 32)
    old.mkdir(parents=True)
    expired = {"id": old.name, "status": "done", "finished": time.time() - 7200}
    (old / "state.json").write_text(json.dumps(expired))
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = jobs / ("1" * 32)  # left running by a server process of this host that is gone
    stale.mkdir()
    (stale / "state.json").write_text(json.dumps({"id": stale.name, "status": "running", "finished": None,
                                                  "host": socket.gethostname(), "pid": int(gone)}))
    srv = Server(world["engine"], [world["root"]], jobs, "--allow-urls", "127.0.0.1", "--keep-jobs", "1h")
    yield srv, old
    srv.stop()


class Redirecting(RangeHandler):
    """``/out?to=URL`` answers 302 to URL; every other path is a file, as RangeHandler serves it."""

    def send_head(self):
        if self.path.startswith("/out?to="):
            RangeHandler.paths.append(self.path)
            self.send_response(302)
            self.send_header("Location", self.path[len("/out?to="):])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        return super().send_head()


def test_url_jobs_from_allowed_hosts_only_and_expiry(world, open_server, tmp_path):
    import http.server
    import threading
    from functools import partial

    import rasterio.shutil

    srv, old = open_server
    assert not old.exists()
    assert srv.client.get(f"/jobs/{'1' * 32}").json()["status"] == "interrupted"
    served = tmp_path / "served"
    served.mkdir()
    rasterio.shutil.copy(world["root"] / "a.tif", served / "a.tif", driver="COG", BLOCKSIZE=256)
    handler = partial(Redirecting, directory=str(served))
    http_server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=http_server.serve_forever, daemon=True).start()
    port = http_server.server_address[1]
    try:
        # GDAL follows redirects to any host: the server resolves them first, each hop checked
        RangeHandler.paths.clear()
        r = srv.client.post("/jobs", json={"scene": f"http://127.0.0.1:{port}/out?to=http://localhost:{port}/a.tif"})
        assert r.status_code == 400 and "localhost are not allowed" in r.json()["detail"], r.text
        assert RangeHandler.paths == [f"/out?to=http://localhost:{port}/a.tif"]  # a.tif never fetched
        r = srv.client.post("/jobs", json={"scene": f"http://127.0.0.1:{port}/out?to=/nothing.tif"})
        assert r.status_code == 400 and "HTTP 404" in r.json()["detail"], r.text
        url = f"http://127.0.0.1:{port}/out?to=/a.tif"  # a redirect on the allowed host is followed
        r = srv.client.post("/jobs", json={"scene": url})
        assert r.status_code == 202, r.text
        state = _wait_job(srv.client, r.json()["id"], limit=60)
        assert state["status"] == "done", state
        got = tmp_path / "url-labels.tif"
        got.write_bytes(srv.client.get(f"/jobs/{state['id']}/labels.tif").content)
        want = _segment(world, tmp_path / "segment-url.tif")
        with rasterio.open(got) as ds:
            np.testing.assert_array_equal(ds.read(1), want)
        for bad in ("http://localhost:1/a.tif", "http://169.254.169.254/latest/meta-data",
                    "http://127.0.0.1@evil.example/a.tif", "http://user:pw@127.0.0.1/a.tif", "ftp://127.0.0.1/a"):
            r = srv.client.post("/jobs", json={"scene": bad})
            assert r.status_code == 400, (bad, r.text)
    finally:
        http_server.shutdown()


QGIS_RENDER = """
import json, os, sys
from urllib.parse import quote
os.environ["QT_QPA_PLATFORM"] = "offscreen"
from qgis.core import (QgsApplication, QgsCoordinateReferenceSystem, QgsCoordinateTransform,
                       QgsMapRendererSequentialJob, QgsMapSettings, QgsProject, QgsRasterLayer, QgsRectangle)
from qgis.PyQt.QtCore import QSize
app = QgsApplication([], False)
app.initQgis()
tj = json.loads(sys.argv[1])
uri = f"type=xyz&url={quote(tj['tiles'][0], safe='')}&zmin={tj['minzoom']}&zmax={tj['maxzoom']}"
if len(sys.argv) > 2:  # the token, as the password of a Basic authentication configuration
    from qgis.core import QgsAuthMethodConfig
    auth = QgsApplication.authManager()
    assert auth.setMasterPassword("segbench-test", True)
    config = QgsAuthMethodConfig("Basic")
    config.setName("segbench")
    config.setConfig("username", "qgis")
    config.setConfig("password", sys.argv[2])
    assert auth.storeAuthenticationConfig(config)
    uri += f"&authcfg={config.id()}"
layer = QgsRasterLayer(uri, "labels", "wms")
merc = QgsCoordinateReferenceSystem("EPSG:3857")
to_merc = QgsCoordinateTransform(QgsCoordinateReferenceSystem("EPSG:4326"), merc, QgsProject.instance())
extent = to_merc.transformBoundingBox(QgsRectangle(*tj["bounds"]))
res = 40075016.686 / (256 * 2 ** tj["center"][2])
settings = QgsMapSettings()
settings.setLayers([layer])
settings.setDestinationCrs(merc)
settings.setExtent(extent)
settings.setOutputSize(QSize(int(extent.width() / res), int(extent.height() / res)))
job = QgsMapRendererSequentialJob(settings)
job.start()
job.waitForFinished()
img = job.renderedImage()
seen = {}
for y in range(2, img.height() - 2, 3):
    for x in range(2, img.width() - 2, 3):
        c = img.pixelColor(x, y)
        key = f"{c.red()},{c.green()},{c.blue()},{c.alpha()}"
        seen[key] = seen.get(key, 0) + 1
print(json.dumps({"valid": layer.isValid(), "colours": seen}))
"""


@pytest.mark.parametrize("with_token", [False, True], ids=["open", "token"])
def test_qgis_renders_the_xyz_layer_from_the_server(world, open_server, server, with_token, tmp_path):
    """QGIS draws the labels from the open server, and from the server with a token through a Basic
    authentication configuration holding it (QGIS 3.22 has no bearer-token method)."""
    qgis_python = Path("/usr/bin/python3")
    has = qgis_python.exists() and subprocess.run([str(qgis_python), "-c", "import qgis.core"],
                                                  capture_output=True).returncode == 0
    if not has:
        pytest.skip("QGIS is not installed (apt-get install python3-qgis)")
    srv, headers = (server, AUTH) if with_token else (open_server[0], {})
    scene = srv.client.get("/scenes", headers=headers).json()[0]
    tj = srv.client.get(scene["tilejson"].replace(srv.url, ""), headers=headers).json()
    token = [TOKEN] if with_token else []
    env = os.environ | {"QT_QPA_PLATFORM": "offscreen", "QGIS_AUTH_DB_DIR_PATH": str(tmp_path)}
    done = subprocess.run([str(qgis_python), "-c", QGIS_RENDER, json.dumps(tj), *token],
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    shown = json.loads(done.stdout.strip().splitlines()[-1])
    palette = {f"{r},{g},{b},255" for r, g, b in make_spec(classes=4).palette}
    counts = shown["colours"]
    in_palette = sum(n for c, n in counts.items() if c in palette)
    assert shown["valid"] and in_palette > 0.9 * sum(counts.values()), counts
    assert sum(c in counts for c in palette) >= 2  # several classes drawn in their colours


def test_viewer_renders_in_headless_chromium(server, tmp_path):
    import shutil

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium)")
    r = server.client.get("/")  # the page holds no data: open without the token
    assert r.status_code == 200 and "script-src 'unsafe-inline'" in r.headers["content-security-policy"]
    assert "http://" not in r.text and "https://" not in r.text  # nothing loaded from elsewhere
    url = f"{server.url}/#token={TOKEN}"
    common = [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
              "--window-size=900,700", "--virtual-time-budget=8000",
              f"--user-data-dir={tmp_path / 'profile'}"]
    shot = tmp_path / "viewer.png"
    done = subprocess.run([*common, f"--screenshot={shot}", url], capture_output=True, text=True, timeout=90)
    assert shot.is_file() and shot.stat().st_size > 5_000, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, console
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=90).stdout
    loaded = re.search(r"tiles loaded: (\d+), failed: (\d+)", dom)
    assert loaded and int(loaded.group(1)) >= 2 and loaded.group(2) == "0", dom[-1500:]
    assert "class0" in dom and "class3" in dom  # the legend
    shutil.copy(shot, server.log.parent / "viewer.png")


@pytest.mark.parametrize("shape,nodata", [((3, 20, 27), None), ((3, 90, 70), 0)])
def test_tiles_of_a_scene_smaller_than_a_window_or_with_nodata_equal_segment(world, tmp_path, shape, nodata):
    """The renderer in process (the server's own code path below HTTP), on every tile at two zooms."""
    import asyncio

    import morecantile

    from segbench.batcher import DynamicBatcher
    from segbench.engines.registry import load
    from segbench.serve.scenes import open_scene
    from segbench.serve.tiles import TileRenderer, mercator_bounds
    from segbench.tiler.windows import stride_for

    data = np.random.default_rng(0).integers(1, 256, shape, dtype=np.uint8)
    if nodata is not None:
        data[:, 30:50, 10:40] = nodata
    path = write_scene(tmp_path / "scene.tif", data, nodata=nodata)
    options = SegmentOptions(batch=4, confidence=True)
    run = segment_scenes([path], world["engine"], tmp_path / "labels.tif", options)
    conf_path = Path(run.scenes[0].result.confidence)
    scene = open_scene(path)
    tms = morecantile.tms.get("WebMercatorQuad")
    with load(world["engine"]) as engine, DynamicBatcher(engine) as batcher:
        stride = stride_for(engine.spec.tile, None, default=engine.spec.stride)
        renderer = TileRenderer(engine.spec, batcher, stride, "cosine", engine.name)
        for t in tms.tiles(*scene.bounds, [scene.native_zoom, scene.native_zoom + 2]):
            got = decode_png_indices(asyncio.run(renderer.render(scene, t.z, t.x, t.y)))
            want = _warp_to_tile(tmp_path / "labels.tif", mercator_bounds(t.z, t.x, t.y))
            np.testing.assert_array_equal(got, want)
            got = decode_png_indices(asyncio.run(renderer.render(scene, t.z, t.x, t.y, confidence=True)))
            want = _warp_to_tile(conf_path, mercator_bounds(t.z, t.x, t.y), fill=0, nodata=0)
            np.testing.assert_array_equal(got, want)  # the confidence layer: segment's confidence raster


def test_tile_cache_stays_within_its_bound(tmp_path):
    from segbench.serve.cache import TileCache

    cache = TileCache(tmp_path / "tiles", max_bytes=10_000)
    for i in range(40):
        cache.put(f'"{i:024x}"', bytes(1000))
    assert sum(f.stat().st_size for f in (tmp_path / "tiles").iterdir()) <= 10_000
    assert cache.get(f'"{39:024x}"') == bytes(1000) and cache.get('"../../etc/passwd"') is None
    assert (cache.hits, cache.misses) == (1, 1)
