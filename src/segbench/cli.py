"""The ``segbench`` command: parses arguments and calls library functions, nothing more.

Every :class:`~segbench.errors.SegbenchError` is printed as one line on
stderr without a traceback, with a non-zero exit status.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from segbench import __version__
from segbench.argfields import add_options, from_args, positive
from segbench.errors import EngineError, InputError, SegbenchError, UsageError, show_warnings_in_one_line

#: the int8 options of ``build`` (BenchOptions' fields) and its int8 target when none is given (the
#: bench's is its --min-ratio)
BUILD_INT8_OPTIONS = ("calib_tiles", "calib_method", "int8_target", "int8_method", "explain")
BUILD_INT8_TARGET = 0.99

EPILOG = """\
The flow: data -> train -> export -> build -> segment -> bench.
Start with 'segbench demo', which runs all of it on a synthetic scene set."""


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line, as every other failure is (the usage is one --help away);
    exit 2. Subcommands' parsers are of this class too."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message.rstrip('.')}; see '{self.prog} --help'.\n")


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; its choices are the library's own constants."""
    p = _Parser(
        prog="segbench",
        description="Benchmark and deploy semantic-segmentation engines on remote-sensing scenes.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"segbench {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    _demo_and_study_parsers(sub)
    _data_parsers(sub)
    _model_parsers(sub)
    _export_and_build_parsers(sub)
    _segment_parser(sub)
    _bench_parsers(sub)
    _serve_parser(sub)
    return p


def _demo_and_study_parsers(sub) -> None:
    """The demo and study commands."""
    d = sub.add_parser("demo", help="run the whole flow on synthetic scenes, on CPU, in minutes",
                       description="Synthesize scenes, train a small model, export it, build "
                       "engines, segment the held-out scene and print the tradeoff table.")
    d.add_argument("-o", "--out", type=Path, default=Path("segbench-demo"),
                   help="folder for every output (default: ./segbench-demo)")
    d.add_argument("--iters", type=positive, default=None, help="training iterations")
    d.add_argument("--engines", type=_csv, default=None,
                   help="comma-separated engines (default: every CPU engine available here)")
    d.add_argument("--quick", action="store_true", help="tiny sizes, for tests (about a minute)")
    d.add_argument("--study", action="store_true",
                   help="run the demo study instead (studies/demo.toml): three networks x four engines")
    d.add_argument("--workers", type=positive, default=None,
                   help="with --study: its cells on a local Dask cluster of this many worker processes")
    d.set_defaults(func=_cmd_demo)

    st = sub.add_parser("study", help="the whole comparison: networks x datasets x engines, resumable",
                        description="Train (or import), evaluate, export and benchmark every network of a "
                        "study file on every dataset and engine; re-run it to resume. Writes study.json "
                        "and its tables (markdown, CSV, LaTeX) and plots.")
    st.add_argument("file", type=Path, help="study file (TOML), e.g. studies/demo.toml")
    where = st.add_mutually_exclusive_group()
    where.add_argument("--workers", type=positive, default=None,
                       help="run the cells on a local Dask cluster of this many worker processes")
    where.add_argument("--scheduler", default=None,
                       help="run the cells on a running Dask cluster, e.g. tcp://host:8786 (the study "
                            "folder and datasets at the same paths on every worker; GPU workers started "
                            "with --resources GPU=1)")
    st.add_argument("--plan", action="store_true",
                    help="print the cells, what each needs, which are done and an estimate of the time "
                         "left (on --workers N, default 1), and run nothing")
    st.add_argument("--rates-from", type=Path, nargs="+", default=[], metavar="STUDY_JSON",
                    help="with --plan: training rates measured by other studies (e.g. a short pilot study "
                         "on the target GPU), for networks this study has not trained yet")
    st.set_defaults(func=_cmd_study)


def _data_parsers(sub) -> None:
    """The data commands."""
    from segbench.train import prepare, synth

    data = sub.add_parser("data", help="make, prepare and describe training data")
    dsub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    s = dsub.add_parser("synth", help="generate synthetic aerial scenes of the six ISPRS classes")
    s.add_argument("out", type=Path, help="output dataset folder")
    s.add_argument("--train", type=positive, default=6, help="training scenes (default 6)")
    s.add_argument("--val", type=int, default=1, help="validation scenes (default 1)")
    s.add_argument("--test", type=int, default=1, help="held-out test scenes (default 1)")
    s.add_argument("--size", type=positive, default=512, help="train/val scene size in pixels")
    s.add_argument("--test-size", type=positive, default=1024, help="test scene size in pixels")
    s.add_argument("--bands", type=int, choices=synth.BAND_COUNTS, default=3, help="3 = RGB, 4 = RGB+NIR")
    s.add_argument("--dtype", choices=synth.DTYPES, default="uint8")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_cmd_data_synth)
    pr = dsub.add_parser("prepare", help="cut scenes or an official release into training windows")
    pr.add_argument("source", choices=prepare.SOURCES,
                    help="your own GeoTIFF scenes, or an official dataset release")
    pr.add_argument("-o", "--out", type=Path, required=True, help="output dataset folder")
    pr.add_argument("--src", type=Path, help="folder of the downloaded release (archives or files)")
    pr.add_argument("--images", type=Path, nargs="*", default=[], help="scene GeoTIFFs (scenes)")
    pr.add_argument("--labels", type=Path, nargs="*", default=[], help="their label GeoTIFFs")
    pr.add_argument("--classes", type=_csv, default=None, help="class names, comma-separated")
    pr.add_argument("--window", type=positive, default=512, help="window size (default 512)")
    pr.add_argument("--stride", type=positive, default=None, help="window stride")
    pr.set_defaults(func=_cmd_data_prepare)
    st = dsub.add_parser("stats", help="per-band mean/std of the training scenes, into dataset.json")
    st.add_argument("dataset", type=Path)
    st.set_defaults(func=_cmd_data_stats)


def _model_parsers(sub) -> None:
    """The models, train, eval and import commands."""
    from segbench import raster
    from segbench.train import layout

    m = sub.add_parser("models", help="list the model catalogue with parameters and GFLOPs")
    m.add_argument("--classes", type=positive, default=6, help="number of classes (default 6)")
    m.add_argument("--bands", type=positive, default=3, help="input bands (default 3)")
    m.add_argument("--tile", type=positive, default=512, help="tile size for GFLOPs (default 512)")
    m.add_argument("--no-count", action="store_true", help="list without building the models")
    m.set_defaults(func=_cmd_models)

    # train --------------------------------------------------------------
    t = sub.add_parser("train", help="train a catalogue model or any mmseg config with mmsegmentation")
    t.add_argument("model", nargs="?", help="catalogue name (see 'segbench models')")
    t.add_argument("--config", type=Path, default=None,
                   help="an mmseg config file to train instead of a catalogue model")
    t.add_argument("--pretrained", type=Path, default=None,
                   help="local backbone weights to start from (e.g. mmseg's mit_b0 or resnet18_v1c file)")
    t.add_argument("--data", type=Path, required=True, help="segbench dataset folder")
    t.add_argument("-o", "--out", type=Path, required=True, help="output folder")
    t.add_argument("--iters", type=positive, default=80_000, help="iterations (default 80k)")
    t.add_argument("--batch", type=positive, default=4)
    t.add_argument("--crop", type=positive, default=512, help="training crop = engine tile size")
    t.add_argument("--lr", type=float, default=None, help="learning rate (default: the model's)")
    t.add_argument("--device", default="cpu", help="cpu or cuda")
    t.add_argument("--gpus", type=positive, default=1,
                   help="train on this many GPUs, one process each, --batch images per GPU (with "
                        "--device cpu: that many CPU processes on gloo)")
    t.add_argument("--resume", action="store_true",
                   help="continue from the state saved in the output folder (same options)")
    t.set_defaults(func=_cmd_train)

    ev = sub.add_parser("eval", help="evaluate a checkpoint on a dataset split (mmseg's metrics)")
    ev.add_argument("checkpoint", type=Path)
    ev.add_argument("--data", type=Path, required=True, help="segbench dataset folder")
    ev.add_argument("--split", default="val", choices=layout.SPLITS)
    ev.set_defaults(func=_cmd_eval)

    im = sub.add_parser(
        "import", help="bring an mmseg model (config + checkpoint) into segbench",
        description="Import an mmseg 1.x model: a config (any, _base_ resolved; the shipped ones "
        "work as they are) and a model-zoo or work-dir checkpoint become a segbench checkpoint "
        "and spec that export, build, segment and bench use unchanged.")
    im.add_argument("config", type=Path, nargs="?", help="mmseg config .py")
    im.add_argument("checkpoint", type=Path, nargs="?", help="checkpoint .pth (model zoo or work dir)")
    im.add_argument("-o", "--out", type=Path, help="output segbench checkpoint (.pth)")
    im.add_argument("--classes", type=_csv, default=None,
                    help="class names (default: the config's dataset or the checkpoint's meta)")
    im.add_argument("--bands", type=_csv, default=None,
                    help="GeoTIFF bands (1-based) feeding the input channels, e.g. 4,1,2")
    im.add_argument("--tile", type=positive, default=None,
                    help="tile size (default: the config's slide crop_size)")
    im.add_argument("--dtype", choices=raster.SUPPORTED_DTYPES, default="uint8",
                    help="pixel type of the scenes it will segment (default uint8)")
    im.add_argument("--list-configs", metavar="PATTERN", default=None,
                    help="list the configs shipped with mmseg whose path matches PATTERN, and exit")
    im.set_defaults(func=_cmd_import)


def _export_and_build_parsers(sub) -> None:
    """The export, build and engines commands."""
    from segbench.bench.options import INT8, BenchOptions

    e = sub.add_parser("export", help="export a checkpoint to ONNX, verified against PyTorch")
    e.add_argument("checkpoint", type=Path)
    e.add_argument("-o", "--out", type=Path, required=True, help="output .onnx path")
    e.add_argument("--labels", action="store_true", help="output uint8 labels instead of logits")
    e.add_argument("--verify-scenes", type=Path, nargs="*", default=[],
                   help="scenes whose tiles verify the export (besides random tiles)")
    e.add_argument("--deepness", action="store_true",
                   help="also write <out>.deepness.onnx for the Deepness QGIS plugin (its metadata, a "
                        "softmax output)")
    e.set_defaults(func=_cmd_export)

    b = sub.add_parser("build", help="build engines from an exported ONNX model")
    b.add_argument("model", type=Path, help="exported .onnx (with its spec)")
    b.add_argument("--engine", type=_csv, required=True, help="engine name(s), comma-separated")
    b.add_argument("-o", "--out", type=Path, default=None, help="output folder (default: beside)")
    add_options(b, BenchOptions, only=BUILD_INT8_OPTIONS, groups={INT8: _calibration_args(b)},
                default_help={"int8_target": str(BUILD_INT8_TARGET)})
    b.add_argument("--force", action="store_true", help="rebuild even when a current build exists")
    b.set_defaults(func=_cmd_build)
    en = sub.add_parser("engines", help="list engines and whether this machine can run them")
    en.set_defaults(func=_cmd_engines)


def _segment_parser(sub) -> None:
    """The segment command: its options generated from :class:`~segbench.workflow.SegmentOptions`."""
    from segbench.workflow import SegmentOptions

    g = sub.add_parser("segment", help="segment whole GeoTIFF scenes with an engine")
    g.add_argument("scenes", nargs="+",
                   help="GeoTIFFs, VRTs, folders of them, or URLs of COGs (http(s)://, read over HTTP)")
    g.add_argument("--engine", type=Path, required=True, help="built engine artifact")
    g.add_argument("-o", "--out", type=Path, required=True,
                   help="output label GeoTIFF (one scene) or folder")
    add_options(g, SegmentOptions)
    g.set_defaults(func=_cmd_segment)


def _serve_parser(sub) -> None:
    """The serve command: one engine over HTTP (map tiles of labels, scene jobs)."""
    sv = sub.add_parser("serve", help="serve an engine over HTTP: label map tiles and scene jobs")
    sv.add_argument("engine", type=Path, help="built engine artifact")
    sv.add_argument("--scenes", type=Path, nargs="+", required=True, metavar="DIR",
                    help="folders of GeoTIFF scenes to serve (the only files requests may read)")
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    sv.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    sv.add_argument("--token", help="require 'Authorization: Bearer TOKEN' on every route but /healthz")
    sv.add_argument("--jobs", type=Path, default=Path("segbench-jobs"), metavar="DIR",
                    help="job folder, which several server processes may share (default ./segbench-jobs)")
    sv.add_argument("--keep-jobs", default="24h", metavar="DURATION",
                    help="remove finished jobs after this long: 3600, 30m, 12h, 7d (default 24h)")
    sv.add_argument("--allow-urls", type=_csv, default=[], metavar="HOST,...",
                    help="jobs may read http(s) URLs from these hosts only (none by default)")
    sv.add_argument("--batch", type=positive, default=4, help="most windows per engine call (default 4)")
    sv.add_argument("--tile-cache", type=float, default=512.0, metavar="MB",
                    help="rendered tiles kept on disk in the job folder, at most this many MB (0: none; "
                         "default 512)")
    sv.add_argument("--workers", type=positive, default=1,
                    help="server processes on the one port, each with its own engine (default 1)")
    sv.add_argument("--max-jobs", type=positive, default=8,
                    help="most jobs queued or running in the job folder at once (default 8)")
    sv.set_defaults(func=_cmd_serve)


def _bench_parsers(sub) -> None:
    """The bench and report commands."""
    from segbench.bench.options import INT8, BenchOptions

    be = sub.add_parser("bench", help="measure accuracy, latency and memory of engines, ranked")
    be.add_argument("--model", type=Path, required=True, help="exported .onnx (with its spec)")
    be.add_argument("--engines", type=_csv, required=True, help="engine names, comma-separated")
    be.add_argument("--scenes", type=Path, nargs="+", required=True, help="evaluation scenes")
    be.add_argument("--labels", type=Path, nargs="*", default=[], help="their label rasters")
    be.add_argument("-o", "--out", type=Path, default=Path("segbench-bench"), help="output folder")
    be.add_argument("--isprs", action="store_true",
                    help="ISPRS convention: mean F1 and mIoU without clutter, OA over all classes")
    be.add_argument("--workers", type=positive, default=None,
                    help="also measure each engine's scaling: the scenes in chunks on 1 and on this many "
                         "local Dask workers (the 'cluster' extra)")
    be.add_argument("--resume", action="store_true",
                    help="keep engines the report in -o already measured on the same inputs")
    add_options(be, BenchOptions, groups={INT8: _calibration_args(be)})
    be.set_defaults(func=_cmd_bench)
    r = sub.add_parser("report", help="render or merge bench and study reports (JSON)",
                       description="Render one report, or merge several from different machines into "
                                   "one ranking. With a study among them (study.json), the result is a "
                                   "study: bench reports join the dataset of their classes.")
    r.add_argument("reports", type=Path, nargs="+", help="report.json, merged.json or study.json files")
    r.add_argument("-o", "--out", type=Path, default=None,
                   help="write the merged report and its renderings (Markdown, CSV, LaTeX for studies, "
                        "plots) into this folder")
    r.set_defaults(func=_cmd_report)


def _calibration_args(p: argparse.ArgumentParser):
    """The calibration scenes of int8 engines (build and bench), in the group of the int8 options."""
    from segbench.bench.options import INT8

    q = p.add_argument_group(INT8)
    q.add_argument("--calib", type=Path, nargs="*", default=[],
                   help="calibration scenes for int8 (training scenes, never the evaluation scenes)")
    q.add_argument("--calib-labels", type=Path, nargs="*", default=[],
                   help="their label rasters: the int8 target is then the mIoU against them, not against "
                        "the float graph's labels")
    return q


# -- commands --------------------------------------------------------------
def _require_train_extra(purpose: str) -> None:
    """One sentence naming the 'train' extra when torch or mmsegmentation cannot be imported."""
    from segbench.extras import require

    for module in ("torch", "mmseg"):
        require(module, purpose)


def _cmd_demo(args: argparse.Namespace) -> int:
    _require_train_extra("segbench demo")
    from segbench.demo import run_demo

    if args.study:
        from segbench.demo import run_demo_study

        run_demo_study(args.out, quick=args.quick, workers=args.workers)
        return 0
    if args.workers:
        raise UsageError("--workers runs the demo study's cells on Dask; give it with --study.")
    run_demo(args.out, iters=args.iters, engines=args.engines, quick=args.quick)
    return 0


def _cmd_study(args: argparse.Namespace) -> int:
    _require_train_extra("segbench study")
    from segbench.study.run import run_study
    from segbench.study.studyfile import load_study

    study = load_study(args.file)
    if args.plan:
        from segbench.study.plan import plan_study, render_plan

        if args.scheduler:
            raise UsageError("--plan estimates for --workers N; it does not connect to a scheduler.")
        print(render_plan(plan_study(study, args.rates_from), workers=args.workers or 1))
        return 0
    run_study(study, workers=args.workers, scheduler=args.scheduler)
    return 0


def _cmd_data_synth(args: argparse.Namespace) -> int:
    from segbench.train.synth import SynthOptions, synthesize_dataset

    opts = SynthOptions(train=args.train, val=args.val, test=args.test, size=args.size,
                        test_size=args.test_size, bands=args.bands, dtype=args.dtype,
                        seed=args.seed)
    root = synthesize_dataset(args.out, opts)
    print(f"synthetic dataset written to {root}")
    return 0


def _cmd_data_prepare(args: argparse.Namespace) -> int:
    from segbench.train import prepare

    if args.source == "scenes":
        if not args.classes:
            raise UsageError("Name the classes with --classes (their order gives the label values).")
        info = prepare.prepare_scenes(args.images, args.labels, args.out, classes=args.classes,
                                      window=args.window, stride=args.stride)
    elif args.src is None:
        raise UsageError(f"Give the folder of the downloaded {args.source} release with --src.")
    elif args.source == "loveda":
        info = prepare.prepare_loveda(args.src, args.out, window=args.window)
    else:
        info = prepare.prepare_isprs(args.source, args.src, args.out, window=args.window,
                                     stride=args.stride or args.window // 2)
    counts = {s: len(info.pairs(s)) for s in ("train", "val")}
    print(f"dataset written to {args.out}: {counts['train']} training and {counts['val']} "
          f"validation windows, {len(info.classes)} classes, {len(info.bands)} bands")
    return 0


def _cmd_data_stats(args: argparse.Namespace) -> int:
    from segbench.train.layout import DatasetInfo

    info = DatasetInfo.load(args.dataset)
    info = DatasetInfo(**{**info.__dict__, "mean": None, "std": None}).with_stats()
    info.save()
    for band, m, s in zip(info.bands, info.mean, info.std, strict=True):
        print(f"band {band}: mean {m:.3f}  std {s:.3f}")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    _require_train_extra("segbench models")
    from segbench.train.models import print_catalogue

    print_catalogue(classes=args.classes, bands=args.bands, tile=args.tile, count=not args.no_count)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    _require_train_extra("segbench train")
    from segbench.train.config import Recipe
    from segbench.train.runner import train

    if (args.model is None) == (args.config is None):
        raise UsageError("Name one model to train: a catalogue name or --config FILE.py.")
    if args.config is not None and args.config.suffix != ".py":
        raise InputError(f"{args.config} is not an mmseg config (a .py file).")
    recipe = Recipe(iters=args.iters, batch=args.batch, crop=args.crop, lr=args.lr)
    path, _ = train(args.model or str(args.config), args.data, args.out, recipe, device=args.device,
                    resume=args.resume, pretrained=args.pretrained, gpus=args.gpus)
    print(f"checkpoint written to {path}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    _require_train_extra("segbench eval")
    from segbench.bench.evaluate import evaluate

    m = evaluate(args.checkpoint, args.data, args.split)
    print(f"{args.split}: {m['scenes']} scenes, {m['pixels']} labelled pixels  "
          + "  ".join(f"{k} {_percent(m[k])}" for k in ("mIoU", "mAcc", "mFscore", "aAcc")))
    for name, v in m["per_class"].items():
        print(f"  {name:<24} " + "  ".join(f"{k} {_percent(v[k])}" for k in ("IoU", "Acc", "Fscore")))
    return 0


def _percent(value: float | None) -> str:
    """A ratio as a percentage; n/a where it is undefined (a class absent from labels and predictions)."""
    return "n/a" if value is None else f"{100 * value:.2f}"


def _cmd_import(args: argparse.Namespace) -> int:
    _require_train_extra("segbench import")
    if args.list_configs is not None:
        from segbench.mmseg.configs import list_configs, shipped_configs_root

        root = shipped_configs_root()
        found = list_configs(args.list_configs)
        for path in found:
            print(path)
        if not found:
            raise InputError(f"No config shipped with mmseg under {root} matches {args.list_configs!r}.")
        return 0
    if args.config is None or args.checkpoint is None or args.out is None:
        raise UsageError("Give a config, a checkpoint and -o OUT.pth "
                         "(or --list-configs PATTERN to find a config).")
    from segbench.mmseg.importer import import_model

    bands = None
    if args.bands:
        try:
            bands = [int(b) for b in args.bands]
        except ValueError:
            raise UsageError(f"--bands takes band numbers, e.g. 1,2,3; got {','.join(args.bands)}.") from None
    result = import_model(args.config, args.checkpoint, args.out, classes=args.classes, bands=bands,
                          tile=args.tile, input_dtype=args.dtype)
    spec = result.spec
    print(f"{result.checkpoint}: {spec.architecture}, {result.params / 1e6:.3f}M parameters, "
          f"{spec.num_classes} classes ({result.classes_from}), bands {list(spec.bands)}, "
          f"tile {spec.tile}" + (f", stride {spec.stride}" if spec.stride else ""))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from segbench.export.onnx import export_model
    from segbench.raster import sample_tiles
    from segbench.spec import ModelSpec

    real = None
    if args.verify_scenes:
        real = sample_tiles(args.verify_scenes, ModelSpec.load(args.checkpoint), count=4)
    if args.deepness and args.labels:
        raise UsageError("--deepness needs class probabilities: export logits (without --labels).")
    out, spec, agree = export_model(args.checkpoint, args.out, labels=args.labels, verify_tiles=real)
    print(f"exported {out} (ONNX Runtime vs PyTorch: max |diff| {agree.max_abs_diff:.2e}, "
          f"label agreement {agree.label_agreement:.4%} on {agree.tiles} tiles)")
    if args.deepness:
        from segbench.export.deepness import write_deepness_model

        print(f"for Deepness (QGIS): {write_deepness_model(out, spec)}")
    from segbench.export.mlm import mlm_missing, mlm_path

    if no_stac := mlm_missing():  # export_model writes the item where it can
        print(f"segbench: skipping the STAC MLM item: {no_stac}", file=sys.stderr)
    else:
        print(f"STAC MLM item: {mlm_path(out)}")
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    from segbench.engines.registry import build, get_kind

    kinds = [get_kind(name) for name in args.engine]
    calibration, int8 = None, None
    if any(k.graph in ("int8", "fp16") for k in kinds) and args.calib:  # fp16: its overflow check
        from segbench.bench.int8 import int8_setup
        from segbench.spec import ModelSpec

        target = _target(args.int8_target, BUILD_INT8_TARGET)
        calibration, int8 = int8_setup(ModelSpec.load(args.model), args.calib, args.calib_labels,
                                       args.calib_tiles, target, args.explain, method=args.int8_method)
    remade: set[tuple] = set()  # with --force, each graph variant is remade once, not once per engine
    for kind in kinds:
        def note(line: str, name: str = kind.name) -> None:
            print(f"{name}: {line}", file=sys.stderr)

        artifact = build(args.model, kind.name, args.out, calibration, args.calib_method, args.force,
                         force_graph=args.force and (kind.graph, kind.runner.int8_formats) not in remade,
                         int8=int8, note=note)
        remade.add((kind.graph, kind.runner.int8_formats))
        print(f"{kind.name}: {artifact}")
        if kind.graph in ("int8", "fp16"):
            _print_precision(artifact)
    return 0


def _target(given: float | bool | None, default: float) -> float | None:
    """``--int8-target``: the ratio given, ``default`` when not given, None for ``off`` (False)."""
    return default if given is None else None if given is False else float(given)


def _print_precision(artifact: Path) -> None:
    """What an int8 engine's search did, or an fp16 graph kept in float32, and the layers that reduced
    precision hurts most where it explained them."""
    from segbench.export.qualify import describe_fp16, describe_int8
    from segbench.spec import ModelSpec

    options = ModelSpec.load(artifact).build.options
    lines = describe_int8(options["int8"]) if options.get("int8") else describe_fp16(options)
    for line in lines:
        print(f"  {line}")


def _cmd_engines(args: argparse.Namespace) -> int:
    from segbench.engines.registry import KINDS, probe

    width = max(map(len, KINDS))
    described = max(len(kind.description) for kind in KINDS.values())
    print(f"{'engine':<{width}}  {'description':<{described}}  status")
    for name, kind in KINDS.items():
        found = probe(name)  # available, build only, unavailable (absent) or broken (fails to load)
        status = found.state if found.reason is None else f"{found.state}: {found.reason}"
        print(f"{name:<{width}}  {kind.description:<{described}}  {status}")
    return 0


def _cmd_segment(args: argparse.Namespace) -> int:
    from segbench.workflow import Hooks, SegmentOptions, segment_scenes

    def note(n) -> None:  # the command's remarks on stderr, a line per finished scene on stdout
        print(f"segbench: {n.text}" if n.about == "stac" else n.text, file=sys.stderr)

    run = segment_scenes(args.scenes, args.engine, args.out, from_args(SegmentOptions, args),
                         hooks=Hooks(note=note, scene_done=lambda done: print(done.line())), progress=True)
    if run.worker_peaks is not None:
        workers = ", ".join(f"{b / 2**20:.0f}" for b in run.worker_peaks.values())
        print(f"peak memory (MB): this process {run.peak_rss_bytes / 2**20:.0f}, workers {workers}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from segbench.bench.options import BenchOptions
    from segbench.bench.run import BenchConfig, run_bench

    if args.labels and len(args.labels) != len(args.scenes):
        raise UsageError(
            f"Give one label raster per scene ({len(args.scenes)} scenes, {len(args.labels)} labels)."
        )
    config = BenchConfig(model=args.model, engines=args.engines, scenes=args.scenes,
                         labels=args.labels, calib=args.calib, calib_labels=args.calib_labels, out=args.out,
                         isprs=args.isprs, resume=args.resume, workers=args.workers,
                         options=from_args(BenchOptions, args))
    report = run_bench(config)
    if not report.ok_rows:  # the report stays: it says why each engine was not measured
        first = report.engines[0]
        why = (first.reason or first.status).rstrip(".")
        raise EngineError(f"No engine was measured ({first.name}: {why}); "
                          f"{Path(args.out) / 'report.json'} gives each engine's reason.")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from segbench.extras import RuntimeNotInstalledError, require

    for module in ("fastapi", "uvicorn"):
        try:
            require(module, "segbench serve")
        except RuntimeNotInstalledError:
            raise RuntimeNotInstalledError(f"segbench serve needs {module}, which is not installed; run "
                                           "pip install 'segbench[serve]'.") from None
    from segbench.serve.app import ServeConfig, serve
    from segbench.serve.jobs import parse_duration

    serve(ServeConfig(engine=args.engine, roots=tuple(args.scenes), host=args.host, port=args.port,
                      token=args.token, jobs=args.jobs, keep_jobs_s=parse_duration(args.keep_jobs),
                      allow_urls=tuple(h.lower() for h in args.allow_urls), batch=args.batch,
                      max_jobs=args.max_jobs, tile_cache_mb=args.tile_cache, workers=args.workers))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from segbench.study.merge import show_reports

    show_reports(args.reports, args.out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``segbench`` console script.

    SIGTERM and SIGHUP stop a command as Ctrl-C does (temporary files removed);
    the exit status is then 128 + the signal's number (130 for Ctrl-C, 143, 129).
    """
    from segbench.signals import terminate_as_interrupt

    parser = build_parser()
    args = parser.parse_args(argv)
    # GDAL's own messages repeat what the one-sentence errors already say.
    logging.getLogger("rasterio").setLevel(logging.CRITICAL)
    show_warnings_in_one_line()
    try:
        with terminate_as_interrupt():
            return args.func(args)
    except SegbenchError as exc:
        print(f"segbench: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM / SIGHUP as segbench.signals.Terminated
        why = f" ({exc})" if str(exc) else ""
        print(f"segbench: interrupted{why}", file=sys.stderr)
        return getattr(exc, "exit_code", 130)


if __name__ == "__main__":
    sys.exit(main())
