"""The FastAPI app and its uvicorn server: routes, the bearer token, bounds, metrics."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import signal
import sys
import threading
import time
from collections import Counter
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, Request, Response
from fastapi import Path as PathParam
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

from segbench.errors import InputError, SegbenchError, UsageError
from segbench.files import sha256_file
from segbench.serve.cache import TileCache
from segbench.serve.jobs import ACTIVE, LABELS, JobRunner, JobStore
from segbench.serve.metrics import Metrics
from segbench.serve.scenes import Catalog, OutsideRootsError, resolve_under
from segbench.serve.tiles import CoarseZoom, TileNotFound, TileRenderer, render_from_labels, render_imagery
from segbench.serve.urls import resolve_url
from segbench.serve.viewer import VIEWER_HTML

#: the largest request body (bytes) and the most jobs queued or running, and kept, in a job folder
MAX_BODY = 16 * 1024
MAX_ACTIVE_JOBS = 8
MAX_JOBS = 1000
#: routes without the token: liveness, and the viewer's page (it holds no data; it asks for the token)
OPEN_PATHS = ("/healthz", "/")
#: the viewer's page loads nothing from elsewhere
VIEWER_CSP = ("default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
              "img-src 'self' blob: data:; connect-src 'self'")
#: how long clients may keep a tile before asking again (with its ETag)
CACHE_CONTROL = "public, max-age=3600"
#: GDAL's block cache for tile reads (MB) unless GDAL_CACHEMAX says otherwise
GDAL_CACHE_MB = 64
#: seconds between sweeps of expired jobs
EXPIRE_EVERY_S = 30.0


@dataclass(frozen=True)
class ServeConfig:
    """What ``segbench serve`` was given."""

    engine: Path
    roots: tuple[Path, ...]
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    jobs: Path = Path("segbench-jobs")
    keep_jobs_s: float = 86400.0
    allow_urls: tuple[str, ...] = ()
    batch: int = 4
    blend: str = "cosine"
    overlap: int | None = None
    max_queue_ms: float = 2.0
    max_jobs: int = MAX_ACTIVE_JOBS
    tile_cache_mb: float = 512.0
    workers: int = 1
    job_options: dict = field(default_factory=dict)


class Service:
    """The engine, its batcher, the scene catalogue and the job folder of one server process."""

    def __init__(self, config: ServeConfig) -> None:
        from segbench.batcher import DynamicBatcher
        from segbench.engines.registry import load
        from segbench.tiler.windows import stride_for

        self.config = config
        self.catalog = Catalog(list(config.roots))
        self.store = JobStore(config.jobs)
        self.store.reap()
        self.store.expire(config.keep_jobs_s)
        self.engine = load(config.engine, mode="throughput", batch=config.batch)
        spec = self.engine.spec
        if spec.output == "labels":
            self.engine.close()
            raise InputError(f"{config.engine} outputs labels, not logits; serve blends logits across "
                             "windows, so build the engine without an argmax output.")
        self.batcher = DynamicBatcher(self.engine, max_batch=config.batch, max_queue_ms=config.max_queue_ms)
        stride = stride_for(spec.tile, config.overlap, default=spec.stride)
        self.tiles = TileRenderer(spec, self.batcher, stride, config.blend, self.engine.name)
        options = {"batch": config.batch, "blend": config.blend, "overlap": config.overlap}
        self.runner = JobRunner(self.store, config.engine, options | config.job_options)
        self.metrics = Metrics()
        mb = config.tile_cache_mb
        self.cache = TileCache(config.jobs / "tiles", int(mb * 2**20)) if mb > 0 else None
        self.digest = _engine_digest(config.engine)
        self._closed = False

    def etag(self, scene, z: int, x: int, y: int, layer: str = "labels") -> str | None:
        """A tile's ETag: the scene file's identity (path, size, modification time), the engine's
        digest and the tiling, and the tile; None where the scene cannot be read now."""
        try:
            st = scene.path.stat()
        except OSError:
            return None
        if z < scene.minzoom:  # served from a job's labels, which may change
            return None
        key = (f"{scene.path}|{st.st_size}|{st.st_mtime_ns}|{self.digest}|{self.tiles.blend}|"
               f"{self.tiles.stride}")
        return '"' + hashlib.sha1(f"{key}|{layer}|{z}/{x}/{y}".encode()).hexdigest()[:24] + '"'

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.runner.shutdown()
            self.batcher.close()
            self.engine.close()


def _engine_digest(engine: Path) -> str:
    """The engine artifact's content digest (a folder or unreadable file: its size and time)."""
    try:
        return sha256_file(engine)[:16]
    except OSError:
        st = engine.stat()
        return f"{st.st_size}-{st.st_mtime_ns}"


def _json_error(status: int, detail: str):
    return JSONResponse({"detail": detail}, status_code=status)


def _route_of(path: str) -> str:
    for prefix, name in (("/tiles/", "tile"), ("/imagery/", "imagery"), ("/jobs", "jobs"),
                         ("/scenes", "scenes"), ("/metrics", "metrics")):
        if path.startswith(prefix):
            return name
    return "other"


def _has_token(given: str, token: str) -> bool:
    """True for ``Bearer TOKEN``, or HTTP Basic with TOKEN as the password and any user name: what
    clients without bearer tokens send (QGIS 3.22's Basic authentication method, curl -u, GDAL's
    GDAL_HTTP_USERPWD), as token-based services such as GitHub's take it."""
    scheme, _, value = given.partition(" ")
    if scheme.lower() == "basic":
        try:
            given = "Bearer " + base64.b64decode(value.strip(), validate=True).decode().partition(":")[2]
        except (ValueError, UnicodeDecodeError):
            return False
    return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())


def _middleware(app, service: Service) -> None:
    token = service.config.token

    def refuse(request):
        """The response that refuses ``request`` before any route: a missing token, a large body."""
        if token is not None and request.url.path not in OPEN_PATHS:
            if not _has_token(request.headers.get("authorization", ""), token):
                response = _json_error(401, "Give the server's token as 'Authorization: Bearer TOKEN' "
                                            "(or as the password of HTTP Basic authentication).")
                response.headers["WWW-Authenticate"] = 'Bearer, Basic realm="segbench"'
                return response
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
            return _json_error(413, f"Request bodies are limited to {MAX_BODY} bytes.")
        return None

    @app.middleware("http")
    async def guard(request, call_next):
        start = time.perf_counter()
        response = refuse(request) or await call_next(request)
        service.metrics.observe(_route_of(request.url.path), time.perf_counter() - start,
                                response.status_code)
        return response

    @app.exception_handler(TileNotFound)
    async def not_found(request, exc):
        return _json_error(404, str(exc))

    @app.exception_handler(SegbenchError)
    async def bad_input(request, exc):
        return _json_error(422, str(exc))


def _scene_routes(app, service: Service) -> None:
    def tilejson(scene, base: str) -> dict:
        w, s, e, n = scene.bounds
        spec = service.tiles.spec
        return {"tilejson": "3.0.0", "name": scene.path.name, "scheme": "xyz",
                "tiles": [f"{base}tiles/{scene.id}/{{z}}/{{x}}/{{y}}.png"],
                "minzoom": scene.minzoom, "maxzoom": scene.maxzoom, "bounds": [w, s, e, n],
                "center": [(w + e) / 2, (s + n) / 2, scene.native_zoom],
                "legend": [{"value": i, "name": c, "color": "#{:02x}{:02x}{:02x}".format(*spec.palette[i])}
                           for i, c in enumerate(spec.classes)]}

    def find(sid: str):
        scene = service.catalog.get(sid)
        if scene is None:
            raise TileNotFound(f"No scene {sid!r} here; GET /scenes lists them.")
        return scene

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "engine": service.engine.name, "pid": os.getpid()}

    @app.get("/scenes")
    async def scenes(request: Request):
        base = str(request.base_url)
        found = await asyncio.to_thread(service.catalog.scenes)
        return [{"id": s.id, "name": s.path.name, "bounds": list(s.bounds), "width": s.width,
                 "height": s.height, "minzoom": s.minzoom, "maxzoom": s.maxzoom,
                 "tilejson": f"{base}scenes/{s.id}/tilejson.json"} for s in found]

    @app.get("/scenes/{sid}/tilejson.json")
    async def scene_tilejson(request: Request, sid: str = PathParam(max_length=64)):
        return tilejson(find(sid), str(request.base_url))

    @app.get("/tiles/{sid}/{z}/{x}/{y}.png")
    async def tile(request: Request, z: int, x: int, y: int, sid: str = PathParam(max_length=64),
                   layer: Literal["labels", "confidence"] = "labels"):
        scene = find(sid)
        confidence = layer == "confidence"
        etag = service.etag(scene, z, x, y, layer)
        if etag is not None and request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers={"ETag": etag, "Cache-Control": CACHE_CONTROL})
        cached = None
        if etag is not None and service.cache is not None:
            cached = await asyncio.to_thread(service.cache.get, etag)
        try:
            png = cached or await service.tiles.render(scene, z, x, y, confidence)
            if cached is None and etag is not None and service.cache is not None:
                await asyncio.to_thread(service.cache.put, etag, png)
        except CoarseZoom:
            labels = await asyncio.to_thread(service.store.finished_labels, str(scene.path))
            if labels is None or confidence:
                raise
            png = await asyncio.to_thread(render_from_labels, labels, service.tiles.palette, z, x, y)
        headers = {"Cache-Control": CACHE_CONTROL} | ({"ETag": etag} if etag else {})
        return Response(png, media_type="image/png", headers=headers)

    @app.get("/imagery/{sid}/{z}/{x}/{y}.png")
    async def imagery(z: int, x: int, y: int, sid: str = PathParam(max_length=64)):
        png = await asyncio.to_thread(render_imagery, find(sid), service.tiles.spec, z, x, y)
        return Response(png, media_type="image/png", headers={"Cache-Control": "public, max-age=3600"})

    @app.get("/")
    async def viewer():
        return HTMLResponse(VIEWER_HTML, headers={"Content-Security-Policy": VIEWER_CSP})

    @app.get("/metrics")
    async def metrics():
        jobs = Counter(s["status"] for s in await asyncio.to_thread(service.store.states))
        text = service.metrics.render(service.batcher.stats(), service.batcher.queue_depth, jobs,
                                      service.tiles.pixels, service.cache)
        return Response(text, media_type="text/plain; version=0.0.4")


async def _read_body(request) -> bytes:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise _TooLarge()
    return body


class _TooLarge(InputError):
    pass


def _job_scene(service: Service, text) -> str:
    """The job's scene: a path resolved inside the roots, or a URL from an allowed host."""
    if not isinstance(text, str):
        raise InputError('Give the scene as {"scene": "path under the scene roots"}.')
    if "://" in text:
        return resolve_url(text, service.config.allow_urls)
    return str(resolve_under(text, service.catalog.roots))


def _job_routes(app, service: Service) -> None:
    store = service.store

    def view(state: dict, base: str) -> dict:
        out = dict(state)
        if state["status"] == "done":
            out["labels"] = f"{base}jobs/{state['id']}/{LABELS}"
        return out

    @app.post("/jobs", status_code=202)
    async def create(request: Request):
        try:
            body = json.loads(await _read_body(request) or b"null")
        except _TooLarge:
            return _json_error(413, f"Request bodies are limited to {MAX_BODY} bytes.")
        except ValueError:
            return _json_error(422, 'The body must be JSON: {"scene": "path under the scene roots"}.')
        if not isinstance(body, dict) or set(body) != {"scene"}:
            return _json_error(422, 'The body must be {"scene": "path under the scene roots"} and no more.')
        try:
            scene = await asyncio.to_thread(_job_scene, service, body["scene"])
        except OutsideRootsError as exc:
            return _json_error(404 if "No scene file" in str(exc) else 422, str(exc))
        except InputError as exc:
            return _json_error(400, str(exc))
        states = await asyncio.to_thread(store.states)
        active = sum(s["status"] in ACTIVE for s in states)
        if active >= service.config.max_jobs or len(states) >= MAX_JOBS:
            return _json_error(429, "Too many jobs; wait for some to finish or delete finished ones.")
        state = await asyncio.to_thread(store.create, scene)
        service.runner.submit(state)
        return view(state, str(request.base_url))

    @app.get("/jobs")
    async def jobs(request: Request):
        states = await asyncio.to_thread(store.states)
        return [view(s, str(request.base_url)) for s in states[-MAX_JOBS:]]

    def find(job_id: str) -> dict:
        state = store.read(job_id)
        if state is None:
            raise TileNotFound(f"No job {job_id!r} here.")
        return state

    @app.get("/jobs/{job_id}")
    async def job(request: Request, job_id: str):
        return view(find(job_id), str(request.base_url))

    @app.get("/jobs/{job_id}/labels.tif")
    async def labels(job_id: str):
        state = find(job_id)
        path = store.folder / job_id / "out" / LABELS
        if state["status"] != "done" or not path.is_file():
            return _json_error(409 if state["status"] in ACTIVE else 404,
                               f"Job {job_id} is {state['status']}; its labels exist once it is done.")
        return FileResponse(path, media_type="image/tiff; application=geotiff; profile=cloud-optimized")

    @app.delete("/jobs/{job_id}")
    async def delete(job_id: str):
        state = find(job_id)
        if state["status"] in ACTIVE:
            (store.folder / job_id / "cancel").touch()
            return Response(status_code=202)
        await asyncio.to_thread(store.remove, job_id)
        return Response(status_code=204)


def _stop_jobs_on_signals(runner: JobRunner) -> None:
    """SIGTERM and SIGINT stop the running job at once, then go on to uvicorn's own handler (which
    waits for open connections before the app shuts down), so a job cannot finish meanwhile."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)
        if callable(previous):
            def handler(signum, frame, previous=previous) -> None:
                runner.stop()
                previous(signum, frame)

            signal.signal(sig, handler)


def create_app(service: Service):
    """The ASGI app over a started :class:`Service`."""
    @asynccontextmanager
    async def lifespan(app):
        async def expire() -> None:
            while True:
                await asyncio.sleep(EXPIRE_EVERY_S)
                await asyncio.to_thread(service.store.reap)
                await asyncio.to_thread(service.store.expire, service.config.keep_jobs_s)

        task = asyncio.create_task(expire())
        _stop_jobs_on_signals(service.runner)
        try:
            yield
        finally:
            task.cancel()
            await asyncio.to_thread(service.close)

    app = FastAPI(title="segbench serve", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    _middleware(app, service)
    _scene_routes(app, service)
    _job_routes(app, service)
    app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["GET", "POST", "DELETE"],
                       allow_headers=["Authorization", "Content-Type"], expose_headers=["ETag"])
    return app


#: the environment variable that hands the configuration to each worker process of ``--workers N``
ENV_CONFIG = "SEGBENCH_SERVE_CONFIG"


def _config_to_json(config: ServeConfig) -> str:
    fields = {k: (str(v) if isinstance(v, Path) else v) for k, v in config.__dict__.items()}
    fields["roots"] = [str(r) for r in config.roots]
    return json.dumps(fields)


def _config_from_json(text: str) -> ServeConfig:
    fields = json.loads(text)
    fields.update(engine=Path(fields["engine"]), roots=tuple(Path(r) for r in fields["roots"]),
                  jobs=Path(fields["jobs"]), allow_urls=tuple(fields["allow_urls"]))
    return ServeConfig(**fields)


def app_from_env():
    """uvicorn's app factory in each worker process of ``--workers N``: its own engine and batcher."""
    return create_app(Service(_config_from_json(os.environ[ENV_CONFIG])))


def _check(config: ServeConfig) -> None:
    if not 0 < config.port < 65536:
        raise UsageError(f"--port must be between 1 and 65535, not {config.port}.")
    if config.tile_cache_mb < 0:
        raise UsageError(f"--tile-cache takes megabytes, 0 or more, not {config.tile_cache_mb}.")
    if config.workers < 1:
        raise UsageError(f"--workers must be at least 1, not {config.workers}.")
    if config.token is None and config.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"segbench serve: warning: listening on {config.host} without --token: anyone who can "
              "reach this port can read the scenes' labels and run jobs.", file=sys.stderr)


def serve(config: ServeConfig) -> None:
    """Start the service and run it on uvicorn until SIGINT or SIGTERM (with ``workers`` > 1, that
    many processes on one socket, each with its own engine, sharing the job folder)."""
    import uvicorn

    _check(config)
    # GDAL's block cache would grow to 5% of the machine's memory as tiles touch more of the scenes
    os.environ.setdefault("GDAL_CACHEMAX", str(GDAL_CACHE_MB))
    common = {"host": config.host, "port": config.port, "log_level": "warning",
              "timeout_graceful_shutdown": 5, "limit_concurrency": 256}
    if config.workers > 1:
        from segbench.spec import ModelSpec

        scenes = len(Catalog(list(config.roots)).scenes())  # what a worker would refuse, said once here
        build = ModelSpec.load(config.engine).build
        name = build.engine if build else config.engine
        os.environ[ENV_CONFIG] = _config_to_json(config)
        print(f"segbench serve: {name} on http://{config.host}:{config.port}/ "
              f"({scenes} scenes, {config.workers} workers, jobs in {config.jobs})", flush=True)
        uvicorn.run("segbench.serve.app:app_from_env", factory=True, workers=config.workers, **common)
        return
    service = Service(config)
    try:
        print(f"segbench serve: {service.engine.name} on http://{config.host}:{config.port}/ "
              f"({len(service.catalog.scenes())} scenes, jobs in {config.jobs})", flush=True)
        uvicorn.Server(uvicorn.Config(create_app(service), **common)).run()
    finally:
        service.close()
