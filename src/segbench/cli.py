"""The ``segbench`` command: parses arguments and calls library functions, nothing more.

Every :class:`~segbench.errors.SegbenchError` is printed as one line on
stderr without a traceback, with a non-zero exit status.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from segbench import __version__
from segbench.errors import InputError, SegbenchError, UsageError

EPILOG = """\
The flow: data -> train -> export -> build -> segment -> bench.
Start with 'segbench demo', which runs all of it on a synthetic scene set."""


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be a positive integer")
    return value


def _batch_size(text: str) -> int | str:
    """A positive batch size, or ``auto`` (measured: segbench.engines.batchsize)."""
    if text == "auto":
        return text
    try:
        return _positive(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text} is neither 'auto' nor a positive integer") from None


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; its choices are the library's own constants."""
    from segbench import raster
    from segbench.train import layout, prepare, synth

    p = argparse.ArgumentParser(
        prog="segbench",
        description="Benchmark and deploy semantic-segmentation engines on remote-sensing scenes.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"segbench {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    # demo ---------------------------------------------------------------
    d = sub.add_parser("demo", help="run the whole flow on synthetic scenes, on CPU, in minutes",
                       description="Synthesize scenes, train a small model, export it, build "
                       "engines, segment the held-out scene and print the tradeoff table.")
    d.add_argument("-o", "--out", type=Path, default=Path("segbench-demo"),
                   help="folder for every output (default: ./segbench-demo)")
    d.add_argument("--iters", type=_positive, default=None, help="training iterations")
    d.add_argument("--engines", type=_csv, default=None,
                   help="comma-separated engines (default: every CPU engine available here)")
    d.add_argument("--quick", action="store_true", help="tiny sizes, for tests (about a minute)")
    d.add_argument("--study", action="store_true",
                   help="run the demo study instead (studies/demo.toml): three networks x four engines")
    d.add_argument("--workers", type=_positive, default=None,
                   help="with --study: its cells on a local Dask cluster of this many worker processes")
    d.set_defaults(func=_cmd_demo)

    st = sub.add_parser("study", help="the whole comparison: networks x datasets x engines, resumable",
                        description="Train (or import), evaluate, export and benchmark every network of a "
                        "study file on every dataset and engine; re-run it to resume. Writes study.json "
                        "and its tables (markdown, CSV, LaTeX) and plots.")
    st.add_argument("file", type=Path, help="study file (TOML), e.g. studies/demo.toml")
    where = st.add_mutually_exclusive_group()
    where.add_argument("--workers", type=_positive, default=None,
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

    # data ---------------------------------------------------------------
    data = sub.add_parser("data", help="make, prepare and describe training data")
    dsub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    s = dsub.add_parser("synth", help="generate synthetic aerial scenes of the six ISPRS classes")
    s.add_argument("out", type=Path, help="output dataset folder")
    s.add_argument("--train", type=_positive, default=6, help="training scenes (default 6)")
    s.add_argument("--val", type=int, default=1, help="validation scenes (default 1)")
    s.add_argument("--test", type=int, default=1, help="held-out test scenes (default 1)")
    s.add_argument("--size", type=_positive, default=512, help="train/val scene size in pixels")
    s.add_argument("--test-size", type=_positive, default=1024, help="test scene size in pixels")
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
    pr.add_argument("--window", type=_positive, default=512, help="window size (default 512)")
    pr.add_argument("--stride", type=_positive, default=None, help="window stride")
    pr.set_defaults(func=_cmd_data_prepare)
    st = dsub.add_parser("stats", help="per-band mean/std of the training scenes, into dataset.json")
    st.add_argument("dataset", type=Path)
    st.set_defaults(func=_cmd_data_stats)

    # models -------------------------------------------------------------
    m = sub.add_parser("models", help="list the model catalogue with parameters and GFLOPs")
    m.add_argument("--classes", type=_positive, default=6, help="number of classes (default 6)")
    m.add_argument("--bands", type=_positive, default=3, help="input bands (default 3)")
    m.add_argument("--tile", type=_positive, default=512, help="tile size for GFLOPs (default 512)")
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
    t.add_argument("--iters", type=_positive, default=80_000, help="iterations (default 80k)")
    t.add_argument("--batch", type=_positive, default=4)
    t.add_argument("--crop", type=_positive, default=512, help="training crop = engine tile size")
    t.add_argument("--lr", type=float, default=None, help="learning rate (default: the model's)")
    t.add_argument("--device", default="cpu", help="cpu or cuda")
    t.add_argument("--gpus", type=_positive, default=1,
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
    im.add_argument("--tile", type=_positive, default=None,
                    help="tile size (default: the config's slide crop_size)")
    im.add_argument("--dtype", choices=raster.SUPPORTED_DTYPES, default="uint8",
                    help="pixel type of the scenes it will segment (default uint8)")
    im.add_argument("--list-configs", metavar="PATTERN", default=None,
                    help="list the configs shipped with mmseg whose path matches PATTERN, and exit")
    im.set_defaults(func=_cmd_import)

    # export -------------------------------------------------------------
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

    # build / engines -----------------------------------------------------
    b = sub.add_parser("build", help="build engines from an exported ONNX model")
    b.add_argument("model", type=Path, help="exported .onnx (with its spec)")
    b.add_argument("--engine", type=_csv, required=True, help="engine name(s), comma-separated")
    b.add_argument("-o", "--out", type=Path, default=None, help="output folder (default: beside)")
    _int8_args(b)
    b.add_argument("--force", action="store_true", help="rebuild even when a current build exists")
    b.set_defaults(func=_cmd_build)
    en = sub.add_parser("engines", help="list engines and whether this machine can run them")
    en.set_defaults(func=_cmd_engines)

    # segment ------------------------------------------------------------
    g = sub.add_parser("segment", help="segment whole GeoTIFF scenes with an engine")
    g.add_argument("scenes", nargs="+",
                   help="GeoTIFFs, VRTs, folders of them, or URLs of COGs (http(s)://, read over HTTP)")
    g.add_argument("--engine", type=Path, required=True, help="built engine artifact")
    g.add_argument("-o", "--out", type=Path, required=True,
                   help="output label GeoTIFF (one scene) or folder")
    _tiling_args(g)
    g.add_argument("--nodata", type=float, default=None, help="input nodata (default: the file's)")
    g.add_argument("--confidence", action="store_true", help="also write max-probability rasters")
    g.add_argument("--probabilities", action="store_true",
                   help="also write per-class probability rasters (a band per class, round(254 p), "
                        "255 nodata)")
    g.add_argument("--resample", action="store_true",
                   help="run each scene at the model's ground sample distance (a warped VRT), the "
                        "outputs back on the scene's grid")
    g.add_argument("--aoi", type=Path, default=None,
                   help="segment only inside the polygons of this vector file (.gpkg, .geojson, ...; "
                        "reprojected to each scene's CRS): windows outside are not run, pixels outside "
                        "are nodata")
    vec = g.add_argument_group("polygons (the 'gis' extra)")
    vec.add_argument("--vector", type=Path, default=None,
                     help="also write one polygon per region (class id, class name, area in m2) to this "
                          ".gpkg, .geojson or .fgb file; with several scenes, its extension gives the "
                          "format of a file beside each label raster (x.labels.tif: x.polygons.gpkg)")
    vec.add_argument("--min-area", type=float, default=0.0, help="drop polygons smaller than this (m2)")
    vec.add_argument("--simplify", type=float, default=0.0,
                     help="simplify polygons with this tolerance (map units)")
    dist = g.add_argument_group("in chunks on Dask (the 'cluster' extra)")
    where = dist.add_mutually_exclusive_group()
    where.add_argument("--workers", type=_positive, default=None,
                       help="start a local Dask cluster of this many worker processes (one thread each)")
    where.add_argument("--scheduler", default=None,
                       help="use a running Dask scheduler, e.g. tcp://host:8786 (the engine and scenes "
                            "at the same paths on every worker)")
    dist.add_argument("--chunk", type=_positive, default=None,
                      help="chunk side in pixels on Dask (default 4096; whole label blocks)")
    dist.add_argument("--chunk-files", type=Path, default=None, metavar="DIR",
                      help="workers write each chunk's labels to a file in DIR (storage every worker and "
                           "this machine share) instead of sending them back: for outputs too large to "
                           "pass through the client; removed when the scene is done")
    g.set_defaults(func=_cmd_segment)

    # bench / report -----------------------------------------------------
    be = sub.add_parser("bench", help="measure accuracy, latency and memory of engines, ranked")
    be.add_argument("--model", type=Path, required=True, help="exported .onnx (with its spec)")
    be.add_argument("--engines", type=_csv, required=True, help="engine names, comma-separated")
    be.add_argument("--scenes", type=Path, nargs="+", required=True, help="evaluation scenes")
    be.add_argument("--labels", type=Path, nargs="*", default=[], help="their label rasters")
    be.add_argument("--reference", default="torch-fp32", help="reference engine (default torch-fp32)")
    be.add_argument("-o", "--out", type=Path, default=Path("segbench-bench"), help="output folder")
    be.add_argument("--isprs", action="store_true",
                    help="ISPRS convention: mean F1 and mIoU without clutter, OA over all classes")
    be.add_argument("--min-ratio", type=float, default=0.99,
                    help="qualify at this fraction of the reference's mIoU (default 0.99, MLPerf)")
    be.add_argument("--max-latency-ms", type=float, default=None, help="latency budget per tile")
    be.add_argument("--max-memory-mb", type=float, default=None, help="peak memory budget")
    be.add_argument("--workers", type=_positive, default=None,
                    help="also measure each engine's scaling: the scenes in chunks on 1 and on this many "
                         "local Dask workers (the 'cluster' extra)")
    be.add_argument("--resume", action="store_true",
                    help="keep engines the report in -o already measured on the same inputs")
    be.add_argument("--maps", action="store_true",
                    help="write where each engine's labels differ from the reference's, beside its labels "
                         "(<scene>.disagreement.tif, styled for QGIS)")
    _int8_args(be, target_default="the --min-ratio")
    _tiling_args(be)
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
    return p


def _int8_target(text: str) -> float | str:
    """A ratio in (0, 1], or ``off``."""
    if text == "off":
        return text
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is neither 'off' nor a ratio in (0, 1]")
    return value


def _int8_args(p: argparse.ArgumentParser, target_default: str = "0.99") -> None:
    """Calibration and the int8 accuracy target, the same for build and bench."""
    from segbench.export import precision

    q = p.add_argument_group("int8 engines")
    q.add_argument("--calib", type=Path, nargs="*", default=[],
                   help="calibration scenes for int8 (training scenes, never the evaluation scenes)")
    q.add_argument("--calib-labels", type=Path, nargs="*", default=[],
                   help="their label rasters: the int8 target is then checked as mIoU, not agreement")
    q.add_argument("--calib-tiles", type=_positive, default=32)
    q.add_argument("--calib-method", choices=precision.CALIBRATION_METHODS, default="minmax")
    q.add_argument("--int8-target", type=_int8_target, default=None, metavar="RATIO|off",
                   help=f"what an int8 engine keeps of its float graph on held-out calibration tiles "
                        f"(default {target_default}): that share of its mIoU with --calib-labels, else "
                        f"of label agreement; layers go back to float until it does; 'off': plain int8")
    q.add_argument("--explain", action="store_true",
                   help="rank the quantized layers of each int8 engine by the damage they do and report "
                        "the worst (kept in its spec and the bench report)")


def _tiling_args(p: argparse.ArgumentParser) -> None:
    from segbench.tiler import blend

    p.add_argument("--overlap", type=int, default=None,
                   help="overlap between windows in pixels (default: a quarter tile)")
    p.add_argument("--blend", choices=blend.BLENDS, default="cosine",
                   help="how overlapping windows are combined (default cosine)")
    p.add_argument("--batch", type=_batch_size, default="auto",
                   help="windows per inference call, or 'auto' (the default): the fastest of 1, 2, 4, 8, "
                        "16 in a short sweep on the scene's tiles, kept beside the engine for this machine")


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

        target = _target(args.int8_target, 0.99)
        calibration, int8 = int8_setup(ModelSpec.load(args.model), args.calib, args.calib_labels,
                                       args.calib_tiles, target, args.explain)
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


def _target(given: float | str | None, default: float) -> float | None:
    """``--int8-target``: the ratio given, ``default`` when not given, None for ``off``."""
    return default if given is None else None if given == "off" else float(given)


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
    from segbench.engines.registry import KINDS, availability

    width = max(map(len, KINDS))
    described = max(len(kind.description) for kind in KINDS.values())
    print(f"{'engine':<{width}}  {'description':<{described}}  status")
    for name, kind in KINDS.items():
        reason = availability(name)
        if reason is None:
            status = "available"
        elif availability(name, run=False) is None:
            status = f"build only: {reason}"
        else:
            status = f"unavailable: {reason}"
        print(f"{name:<{width}}  {kind.description:<{described}}  {status}")
    return 0


def _cmd_segment(args: argparse.Namespace) -> int:
    from segbench.engines.registry import load
    from segbench.geo.sidecars import Polygons, Sidecars
    from segbench.geo.stac import stac_missing
    from segbench.spec import ModelSpec
    from segbench.tiler import auto_batch, segment_many

    on_dask = bool(args.workers or args.scheduler)
    if (args.chunk or args.chunk_files) and not on_dask:
        raise UsageError("--chunk and --chunk-files apply with --workers or --scheduler only.")
    if (args.confidence or args.probabilities or args.resample) and on_dask:
        raise UsageError("--confidence, --probabilities and --resample are not available with "
                         "--workers or --scheduler yet.")
    aoi_file = args.aoi
    if args.aoi:
        from segbench.geo.aoi import read_aoi

        args.aoi = read_aoi(args.aoi)
    polygons = None
    if args.vector:  # before any work: a path polygons cannot go to
        from segbench.files import check_output_folder
        from segbench.geo.vector import driver_for

        driver_for(args.vector)
        check_output_folder(args.vector)
        polygons = Polygons(args.vector, min_area=args.min_area, simplify=args.simplify)
    spec = ModelSpec.load(args.engine)
    sidecars = Sidecars.where_possible(spec, polygons)
    if not sidecars.stac:  # said once, not once per scene
        print(f"segbench: skipping STAC items: {stac_missing()}", file=sys.stderr)
    _refuse_replacing_inputs(args, aoi_file, sidecars, on_dask)
    batch = args.batch
    if batch == "auto" and args.scheduler:  # the sweep would measure this machine, not the workers
        batch = 4
        print("batch 4 (auto measures this machine, not the cluster's workers: give --batch to choose)",
              file=sys.stderr)
    elif batch == "auto":
        choice = auto_batch(args.engine, args.scenes, overlap=args.overlap)
        print(choice.describe(), file=sys.stderr)
        batch = choice.batch
    if on_dask:
        return _segment_on_cluster(args, batch, spec, sidecars)
    # batches back to back: OpenVINO compiles for them and keeps several in flight
    engine = load(args.engine, mode="throughput", batch=batch)
    try:
        segment_many(args.scenes, engine, args.out, overlap=args.overlap, blend=args.blend, batch=batch,
                     nodata=args.nodata, confidence=args.confidence, probabilities=args.probabilities,
                     aoi=args.aoi, resample=args.resample, on_scene=_scene_done(sidecars, args))
    finally:
        engine.close()
    return 0


def _refuse_replacing_inputs(args: argparse.Namespace, aoi_file: Path | None, sidecars,
                             on_dask: bool) -> None:
    """Before any work: no output of ``segment`` (rasters, sidecars, polygons, resume state, chunk
    files) may replace an input (scenes, the engine, the AOI) or another of its outputs."""
    from segbench.cluster.resume import chunk_folder, manifest_path, staged_path
    from segbench.protect import Inputs, refuse_shared
    from segbench.tiler.scenes import plan_outputs

    planned = plan_outputs(args.scenes, args.out, confidence=args.confidence,
                           probabilities=args.probabilities)
    inputs = Inputs().add_artifact(args.engine)
    if aoi_file is not None:
        inputs.add(aoi_file)
    outputs: list[tuple[Path, list[Path]]] = []  # each output with the files it is written as
    for o in planned:
        inputs.add_raster(o.scene)
        written = sidecars.outputs(o.labels, o.confidence, o.probabilities, out=args.out)
        if on_dask:
            written[o.labels] += [staged_path(o.labels), manifest_path(o.labels)]
        outputs += written.items()
    inputs.refuse(f for _, files in outputs for f in files)
    refuse_shared(outputs)
    if args.chunk_files is not None:
        for o in planned:
            inputs.refuse_folder(chunk_folder(args.chunk_files, o.labels))


def _gpu_resources(args: argparse.Namespace, spec) -> dict[str, float] | None:
    """On a running cluster, a GPU engine's chunks go to workers that declare a GPU (one each)."""
    from segbench.engines.registry import get_kind

    gpu = spec.build is not None and get_kind(spec.build.engine).device == "cuda"
    return {"GPU": 1} if args.scheduler and gpu else None


def _scene_done(sidecars, args: argparse.Namespace):
    """What follows each finished scene: its sidecars (styles, polygons, STAC item) and one line."""

    def done(result) -> None:
        note = sidecars.write(result.output, confidence=result.confidence,
                              probabilities=result.probabilities, scene=result.scene, out=args.out)
        print(f"{result.output}: {result.megapixels:.1f} MP at {result.megapixels_per_s:.2f} MP/s"
              + (f"; {note}" if note else ""))

    return done


def _segment_on_cluster(args: argparse.Namespace, batch: int, spec, sidecars) -> int:
    from segbench.cluster import dask_client, segment_on_cluster, worker_peaks
    from segbench.peak import peak_rss_bytes
    from segbench.tiler.chunks import CHUNK

    with dask_client(args.workers, args.scheduler) as client:
        segment_on_cluster(client, args.scenes, args.engine, args.out, chunk=args.chunk or CHUNK,
                           overlap=args.overlap, blend=args.blend, batch=batch, nodata=args.nodata,
                           aoi=args.aoi, resources=_gpu_resources(args, spec), chunk_files=args.chunk_files,
                           on_scene=_scene_done(sidecars, args))
        peaks = worker_peaks(client)
    workers = ", ".join(f"{mb / 2**20:.0f}" for mb in peaks.values())
    print(f"peak memory (MB): this process {peak_rss_bytes() / 2**20:.0f}, workers {workers}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from segbench.bench.options import BenchOptions
    from segbench.bench.run import BenchConfig, run_bench

    if args.labels and len(args.labels) != len(args.scenes):
        raise UsageError(
            f"Give one label raster per scene ({len(args.scenes)} scenes, {len(args.labels)} labels)."
        )
    given = {name: getattr(args, name) for name in BenchOptions.names() if hasattr(args, name)}
    if given.get("int8_target") == "off":
        given["int8_target"] = False  # plain int8, no search
    config = BenchConfig(model=args.model, engines=args.engines, scenes=args.scenes,
                         labels=args.labels, calib=args.calib, calib_labels=args.calib_labels, out=args.out,
                         isprs=args.isprs, resume=args.resume, workers=args.workers,
                         options=BenchOptions(**given))
    run_bench(config)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from segbench.study.merge import show_reports

    show_reports(args.reports, args.out)
    return 0


_python_show_warning = warnings.showwarning


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """segbench's own warnings as one line for the user; other libraries' as Python shows them."""
    if Path(filename).is_relative_to(Path(__file__).parent):
        print(f"segbench: warning: {message}", file=file or sys.stderr)
    else:
        _python_show_warning(message, category, filename, lineno, file, line)


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
    warnings.showwarning = _show_warning
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
