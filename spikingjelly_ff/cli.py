"""``sjff``: the command line, a thin shell over the library.

    sjff train CONFIG [--set key=value ...] --out RUNDIR [--resume] [--nproc N]
    sjff eval MODEL [--dataset mnist|fashion-mnist] [--limit N] [--views S] [--json]
    sjff readout MODEL [--set train.readout.key=value ...] --out DIR [--json]
    sjff export MODEL --format onnx|spike --out PATH [--views S]
    sjff analyze MODEL [--dataset mnist] [--limit N] [--json] [--plot FILE.png]
    sjff reproduce paper|beyond --out DIR [--seeds N] [--epochs N] [--limit N]
    sjff data fetch mnist|fashion-mnist [--root DIR]

and the commands that installed packages add through the ``spikingjelly_ff.commands``
entry-point group; the server package adds

    sjff serve --model-repository DIR [--port P] ...
    sjff state repair STATE_DIR --model M [--version V] [--truncate]

Expected failures (bad config, missing data, shape mismatch, bad model files) print one
``sjff: error: ...`` line and exit with status 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

__all__ = ["main"]


def _train(args) -> int:
    from spikingjelly_ff.runs.config import load_config
    from spikingjelly_ff.runs.train import train

    cfg = load_config(args.config, args.set)
    if args.nproc > 1 or os.environ.get("WORLD_SIZE", "1") != "1":
        from spikingjelly_ff.runs.launch import train_parallel

        final = train_parallel(
            cfg,
            args.out,
            args.nproc,
            args.dist_backend,
            args.dist_timeout,
            not args.quiet,
            resume=args.resume,
            overwrite=args.overwrite,
        )
        if final is None:  # a torchrun rank other than 0: rank 0 reports
            return 0
    else:
        final = train(cfg, args.out, progress=not args.quiet, resume=args.resume, overwrite=args.overwrite)["final"]
    print(json.dumps({"out": str(args.out), **final}) if args.json else f"model written to {Path(args.out) / 'model'}")
    return 0


def _eval(args) -> int:
    from spikingjelly_ff.runs.evaluate import evaluate_model

    result = evaluate_model(
        args.model, args.dataset, args.limit, args.split, args.device, args.batch_size, shift_views=args.views
    )
    if args.json:
        print(json.dumps({k: result[k] for k in ("accuracy", "n", "seconds")} | {"dataset": result["dataset"]}))
    else:
        acc, n, sec = result["accuracy"], result["n"], result["seconds"]
        print(f"{result['dataset']} {args.split}: accuracy {acc:.4f} on {n} images in {sec:.1f}s")
    return 0


def _readout(args) -> int:
    from spikingjelly_ff.runs.readout import fit_readout

    log = (lambda s: None) if args.json else print
    metrics = fit_readout(args.model, args.out, args.set, log=log, overwrite=args.overwrite)
    ro = metrics["readout"]
    print(json.dumps({"out": str(args.out), **ro}) if args.json else f"model written to {Path(args.out) / 'model'}")
    return 0


def _runtime_hebbian(cfg):
    """The Hebbian settings a spike artefact carries for on-line learning: the run's, except
    that a net trained by an optimizer (which the runtime does not have) learns on-line with
    the step rule at the run's eta."""
    from dataclasses import replace

    h = cfg.train.hebbian
    return replace(h, update="step") if cfg.train.hebbian_apply == "optimizer" else h


def _export(args) -> int:
    from spikingjelly_ff.nn.models import AnalogFFNet, SpikingFFNet
    from spikingjelly_ff.runs.checkpoint import load_model
    from spikingjelly_ff.runs.outputs import check_output_file

    if args.format == "spike":
        from spikingjelly_ff.export.spike import resolve_spike_path

        check_output_file(resolve_spike_path(args.out), args.overwrite, args.model)
    else:
        check_output_file(args.out, args.overwrite, args.model)
    net, cfg, meta = load_model(args.model)
    if args.views is not None:
        from spikingjelly_ff.runs.evaluate import set_views

        set_views(net, args.views)
    if args.format == "onnx":
        from spikingjelly_ff.export.onnx import analog_to_onnx, spiking_to_onnx

        if isinstance(net, AnalogFFNet):
            from spikingjelly_ff.functional.params import HebbianParams

            h = cfg.train.hebbian  # the runtime learns with eta and tau; the rest keeps its defaults
            hebbian = HebbianParams(eta=h.eta, eligibility_tau=h.eligibility_tau)
            path = analog_to_onnx(net, args.out, latent=args.latent, hebbian=hebbian)
        else:
            from spikingjelly_ff.nn.spiking_conv import SpikingConvFFNet

            if isinstance(net, SpikingConvFFNet):
                raise ValueError("a spiking conv model exports with --format spike (the NIR spike artefact)")
            if args.latent:
                raise ValueError("--latent is for analog models (a spiking ONNX export outputs scores only)")
            path = spiking_to_onnx(net, args.out)
    elif args.format == "spike":
        from spikingjelly_ff.nn.spiking_conv import SpikingConvFFNet

        if not isinstance(net, (SpikingFFNet, SpikingConvFFNet)):
            raise ValueError("--format spike needs a spiking model; export analog models with --format onnx")
        if args.latent:
            raise ValueError("--latent is for analog ONNX exports")
        from spikingjelly_ff.export.spike import export_spike

        path = export_spike(
            net,
            args.out,
            meta.get("image_shape"),
            hebbian=_runtime_hebbian(cfg),
            evaluation=cfg.eval.params,
            name=cfg.name,
        )
        if cfg.train.hebbian_apply == "optimizer":  # say so: on-line learning is not the training rule
            h = cfg.train.hebbian
            print(
                f"note: {cfg.name} was trained by an optimizer on its presentation deltas; the artefact "
                f"learns on-line with the step rule at eta={h.eta} (learn_after={h.learn_after})",
                file=sys.stderr,
            )
    else:
        raise ValueError(f"unknown export format {args.format!r}")
    print(f"wrote {path}")
    return 0


def _analyze(args) -> int:
    from spikingjelly_ff.runs.analysis import analyze_model

    result = analyze_model(args.model, args.dataset, args.limit, args.plot, args.device)
    if args.json:
        print(json.dumps(result))
    else:
        silent = ", ".join(f"{k}/{w}" for k, w in zip(result["silent"], result["widths"]))
        scores = f"hoyer {result['hoyer']:.4f}  separability {result['separability']:.4f}"
        print(f"{scores}  silent units {silent}  (n={result['n']})")
    return 0


def _reproduce(args) -> int:
    from spikingjelly_ff.runs import reproduce

    run = {"paper": reproduce.reproduce_paper, "beyond": reproduce.reproduce_beyond}[args.what]
    seeds = reproduce.DEFAULT_SEEDS[args.what] if args.seeds is None else args.seeds
    run(
        args.out,
        epochs=args.epochs,
        limit=args.limit,
        test_limit=args.test_limit,
        rows=args.rows,
        seeds=seeds,
        progress=not args.quiet,
    )
    print(f"wrote {Path(args.out) / 'table.md'}")
    return 0


def _data(args) -> int:
    from spikingjelly_ff.runs.data import fetch

    path = fetch(args.name, args.root)
    print(path)
    return 0


#: Commands that other packages add to ``sjff`` through this entry-point group (the server adds
#: ``serve`` and ``state``): the library names no package above it and imports none.
COMMANDS_GROUP = "spikingjelly_ff.commands"


def _plugins() -> dict:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=COMMANDS_GROUP)}


def _run_plugin(name: str, rest: list[str]) -> int:
    """Run the command ``name`` that an installed package registered; it parses ``rest`` itself."""
    try:
        command = _plugins()[name].load()
    except ImportError as exc:
        hint = "pip install 'spikingjelly-ff[serve]'"
        raise RuntimeError(f"sjff {name}: cannot import its package ({exc}); {hint}") from exc
    return command(rest)


def _count(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def _seconds(text: str) -> float:
    """argparse type: a finite number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="sjff", description="Forward-Forward and Hebbian learning for SpikingJelly networks"
    )
    ap.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = ap.add_subparsers(dest="command", required=True)

    from spikingjelly_ff.runs.config import CONFIG_DIR, shipped_configs

    p = sub.add_parser("train", help="train a model from a config file")
    p.add_argument(
        "config",
        help=f"a YAML file, or the name of a config shipped in {CONFIG_DIR}: {', '.join(shipped_configs())}",
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--out", required=True, help="run directory (model/ and metrics.json)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the final metrics as JSON")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the stopped run in --out from where it wrote its state (same config and --set options)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace the run (finished or stopped) that --out holds")
    p.add_argument(
        "--nproc",
        type=_count,
        default=1,
        metavar="N",
        help="data-parallel training on N local processes (implies train.draws=per-sample; docs/distributed.md)",
    )
    p.add_argument("--dist-backend", default="auto", choices=["auto", "gloo", "nccl"], help="default: nccl on cuda")
    p.add_argument(
        "--dist-timeout", type=_seconds, default=300.0, metavar="S", help="seconds a collective waits for other ranks"
    )
    p.set_defaults(func=_train)

    p = sub.add_parser("eval", help="test accuracy of a trained model")
    p.add_argument("model", help="model directory (RUNDIR/model)")
    p.add_argument("--dataset", default=None, help="mnist, fashion-mnist or an IDX directory (default: the model's)")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--limit", type=_count, default=None, metavar="N", help="score the first N images")
    p.add_argument("--batch-size", type=_count, default=None, metavar="N")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--views",
        type=int,
        default=None,
        metavar="S",
        help="analog and spiking conv: classify from 4S+1 shifted views (default: the model's)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_eval)

    p = sub.add_parser("readout", help="fit a linear readout to a trained model (its train.readout settings)")
    p.add_argument("model", help="model directory (RUNDIR/model)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a train.readout.* key")
    p.add_argument("--out", required=True, help="output directory (model/ with the readout, and metrics.json)")
    p.add_argument("--json", action="store_true", help="print the readout's metrics as JSON")
    p.add_argument("--overwrite", action="store_true", help="replace the run that --out holds")
    p.set_defaults(func=_readout)

    p = sub.add_parser("export", help="export a model to ONNX or the spike-runtime format")
    p.add_argument("model")
    p.add_argument("--format", required=True, choices=["onnx", "spike"])
    p.add_argument("--out", required=True, help="output file (or directory for --format spike)")
    p.add_argument("--latent", action="store_true", help="analog ONNX: also output the latent activity")
    p.add_argument("--overwrite", action="store_true", help="replace the file --out names")
    p.add_argument(
        "--views",
        type=int,
        default=None,
        metavar="S",
        help="analog and spiking conv: the export classifies from 4S+1 shifted views (default: the model's)",
    )
    p.set_defaults(func=_export)

    p = sub.add_parser("analyze", help="latent-space sparsity, separability and a t-SNE picture")
    p.add_argument("model")
    p.add_argument("--dataset", default=None)
    p.add_argument("--limit", type=_count, default=None, metavar="N")
    p.add_argument("--plot", default=None, help="write a t-SNE picture (PNG)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_analyze)

    p = sub.add_parser("reproduce", help="the paper's table, or the models beyond it, over several seeds")
    p.add_argument("what", choices=["paper", "beyond"])
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=int, default=None, help="cut the epochs of every row (default: the config's, 10)")
    p.add_argument("--limit", type=_count, default=None, metavar="N", help="use only N training samples")
    p.add_argument("--test-limit", type=_count, default=None, metavar="N", help="use only N test samples")
    p.add_argument(
        "--rows", nargs="+", default=None, help="rows to run (paper: analog-sigmoid, ...; beyond: spiking-mnist, ...)"
    )
    p.add_argument(
        "--seeds",
        type=_count,
        default=None,
        help="seeds per row (paper 5, beyond 3): the config's seed, seed+1, ...; table shows mean ± sd",
    )
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_reproduce)

    p = sub.add_parser("data", help="obtain datasets")
    dsub = p.add_subparsers(dest="data_command", required=True)
    f = dsub.add_parser("fetch", help="download or copy a dataset into the cache")
    f.add_argument("name", choices=["mnist", "fashion-mnist"])
    f.add_argument("--root", default=None, help="target directory (default: the cache dir)")
    f.set_defaults(func=_data)

    for name, ep in sorted(_plugins().items()):
        p = sub.add_parser(name, help=f"provided by {ep.value.split(':')[0]} (sjff {name} --help)", add_help=False)
        p.set_defaults(func=None)
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("SJFF_DEBUG") == "1"
    if "--debug" in argv:
        argv.remove("--debug")
    if argv and argv[0] in _plugins():
        name, rest = argv[0], argv[1:]
        runner = lambda: _run_plugin(name, rest)  # noqa: E731 - the command parses its own options
    else:
        args = build_parser().parse_args(argv)
        runner = lambda: args.func(args)  # noqa: E731
    try:
        return runner() or 0
    except KeyboardInterrupt:
        print("sjff: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - one clear line for the user, traceback with --debug
        if debug:
            raise
        from spikingjelly_ff.runs.errors import is_user_error

        if not is_user_error(exc):
            print(
                f"sjff: internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)",
                file=sys.stderr,
            )
            return 1
        print(f"sjff: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
