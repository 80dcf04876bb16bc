"""Command line of the spikingjelly-ff client (numpy + grpcio + protobuf; image files: Pillow).

    python -m sjff_client infer digit.jpg                      # PNG, JPEG, WebP, ... or .npy
    python -m sjff_client infer t10k-images-idx3-ubyte --index 7
    python -m sjff_client learn digit.png --label 3            # needs the token
    python -m sjff_client stream t10k-images-idx3-ubyte --labels t10k-labels-idx1-ubyte --count 500
    python -m sjff_client stats | versions | snapshot | rollback VERSION | health

Connection: --target (or $SJFF_TARGET, default localhost:8001; give it several times, or
comma-separated, for the replicas of one replicated deployment: a failed learn or infer moves to
the next one, a learn with the same --request-id), --token-file (or $SJFF_TOKEN),
--tls/--ca/--cert/--key for (mutual) TLS.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import grpc
import numpy as np

from .client import Client, RequestFailed
from .images import ImageError, is_idx, prepare, read_idx, read_image
from .targets import split_targets

__all__ = ["main"]


def _image_shape(client: Client) -> tuple[int, int]:
    md = client.model_metadata()
    d = int(md.inputs[0].shape[-1]) if md.inputs else 784
    side = int(round(d**0.5))
    return (side, side)


def load_images(client: Client, path: str, index: int, count: int, invert: str) -> np.ndarray:
    """uint8 ``[N, D]`` from an IDX file (``index``..``index+count``) or one image file."""
    p = Path(path)
    if not p.is_file():
        raise ImageError(f"{path}: no such file")
    if is_idx(p):
        data = read_idx(p)
        if data.ndim < 2:
            raise ImageError(f"{path}: holds labels, not images")
        if not 0 <= index < len(data):
            raise ImageError(f"--index {index} is outside 0..{len(data) - 1}")
        return np.ascontiguousarray(
            data[index : index + count].reshape(min(count, len(data) - index), -1), dtype=np.uint8
        )
    return prepare(read_image(p), _image_shape(client), invert)[None]


def _labels(path: str | None, index: int, count: int) -> np.ndarray | None:
    if path is None:
        return None
    return np.asarray(read_idx(path)[index : index + count], dtype=np.int64)


def _client(args) -> Client:
    return Client(
        targets=split_targets(args.target or [os.environ.get("SJFF_TARGET", "localhost:8001")]),
        attempts=args.attempts,
        model=args.model,
        token_file=args.token_file,
        token_for_inference=args.token_for_inference,
        timeout=args.timeout,
        tls=args.tls,
        root_ca=args.ca,
        client_cert=args.cert,
        client_key=args.key,
        server_name=args.server_name,
    )


def _print(args, obj: dict, text: str) -> None:
    print(json.dumps(obj) if args.json else text)


def cmd_infer(args, c: Client) -> int:
    x = load_images(c, args.image, args.index, args.count, args.invert)
    r = c.infer(x, version=args.model_version, seed=args.seed, steps=args.steps, min_version=args.min_version)
    truth = _labels(args.labels, args.index, args.count)
    rows = []
    for i in range(len(x)):
        row = {
            "index": args.index + i,
            "label": int(r.label[i]),
            "probability": float(r.probability[i, r.label[i]]),
            "version": r.version,
        }
        if truth is not None:
            row["true_label"] = int(truth[i])
        rows.append(row)
        extra = f" (true {truth[i]})" if truth is not None else ""
        _print(
            args,
            row,
            f"image {row['index']}: label {row['label']} p={row['probability']:.3f}{extra} "
            f"[model {r.model_name}/{r.model_version} learning version {r.version}]",
        )
    return 0


def cmd_learn(args, c: Client) -> int:
    x = load_images(c, args.image, args.index, args.count, args.invert)
    if args.label is not None:
        labels = np.full(len(x), args.label, dtype=np.int64)
    else:
        labels = _labels(args.labels, args.index, args.count)
        if labels is None:
            raise ImageError("give --label L or --labels IDX_FILE")
    positive = np.full(len(x), not args.negative)
    r = c.learn(
        x, labels, positive, version=args.model_version, seed=args.seed, eta=args.eta, request_id=args.request_id
    )
    _print(
        args,
        {"version": r.version, "log_odds": r.log_odds.tolist(), "request_id": r.request_id},
        f"update acknowledged: version {r.version}, log-odds before {np.round(r.log_odds, 3).tolist()}",
    )
    return 0


def cmd_stream(args, c: Client) -> int:
    x = load_images(c, args.images, args.start, args.count, "no")
    labels = _labels(args.labels, args.start, args.count)
    if labels is None or len(labels) != len(x):
        raise ImageError("--labels must name the IDX label file that matches the images")
    t0 = time.perf_counter()
    if args.infer:
        batches = (x[i : i + args.batch] for i in range(0, len(x), args.batch))
        preds = np.concatenate([r.label for r in c.infer_stream(batches, version=args.model_version)])
        dt = time.perf_counter() - t0
        acc = float((preds == labels).mean())
        _print(
            args,
            {"images": len(x), "accuracy": acc, "seconds": dt},
            f"{len(x)} images streamed in {dt:.2f}s ({len(x) / dt:.0f}/s): accuracy {acc:.4f}",
        )
        return 0
    accepted = refused = correct = 0
    version = None
    samples = ((x[i : i + 1], labels[i : i + 1]) for i in range(len(x)))
    for res in c.learn_stream(samples, version=args.model_version):
        if isinstance(res, RequestFailed):
            refused += 1
            print(f"refused: {res}", file=sys.stderr)
            continue
        accepted += 1
        correct += int(res.log_odds[0] > 0)
        version = res.version
    dt = time.perf_counter() - t0
    summary = {
        "accepted": accepted,
        "refused": refused,
        "version": version,
        "seconds": dt,
        "positive_log_odds": correct / max(accepted, 1),
    }
    _print(
        args,
        summary,
        f"{accepted} updates acknowledged ({refused} refused) in {dt:.2f}s ({accepted / dt:.0f}/s); "
        f"model at version {version}",
    )
    return 0 if refused == 0 else 1


def cmd_stats(args, c: Client) -> int:
    resp = c.stats(model=args.model if args.model_given else "", version=args.model_version)
    for m in resp.models:
        d = {f.name: v for f, v in m.ListFields()}
        _print(args, d, " ".join(f"{k}={v}" for k, v in d.items()))
    return 0


def cmd_versions(args, c: Client) -> int:
    r = c.list_versions(version=args.model_version, limit=args.limit)
    snaps = [s.version for s in r.snapshots]
    hist = [
        {"version": h.version, "kind": h.kind, "samples": h.samples, "restored": h.restored_version} for h in r.history
    ]
    _print(
        args,
        {"current": r.current_version, "oldest_restorable": r.oldest_restorable, "snapshots": snaps, "history": hist},
        f"current {r.current_version}; restorable {r.oldest_restorable}..{r.current_version}; snapshots {snaps}",
    )
    return 0


def cmd_snapshot(args, c: Client) -> int:
    r = c.snapshot(version=args.model_version, export=args.export)
    _print(
        args,
        {"version": r.version, "path": r.path, "artifact": r.artifact_path, "bytes": r.bytes},
        f"snapshot of version {r.version}: {r.path} ({r.bytes} bytes) {r.artifact_path}",
    )
    return 0


def cmd_rollback(args, c: Client) -> int:
    r = c.rollback(args.to_version, version=args.model_version)
    _print(
        args,
        {"version": r.version, "restored": r.restored_version},
        f"rolled back: version {r.version} holds the weights of version {r.restored_version}",
    )
    return 0


def cmd_health(args, c: Client) -> int:
    live, ready = c.server_live(), c.server_ready()
    md = c.server_metadata()
    model_ready = c.model_ready(version=args.model_version)
    _print(
        args,
        {"live": live, "ready": ready, "model_ready": model_ready, "server": md.name, "version": md.version},
        f"{md.name} {md.version}: live={live} ready={ready} model {args.model} ready={model_ready}",
    )
    return 0 if live and ready and model_ready else 1


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m sjff_client", description=__doc__.splitlines()[0])
    ap.add_argument(
        "--target",
        action="append",
        help="host:port; several (repeated or comma-separated): replicas tried in turn "
        "(default $SJFF_TARGET or localhost:8001)",
    )
    ap.add_argument(
        "--attempts", type=int, help="calls tried at most per learn / infer (default: one per target)"
    )
    ap.add_argument("--model", default=None, help="model name (default mnist)")
    ap.add_argument("--model-version", default="", help="repository version (default: the highest)")
    ap.add_argument("--token-file", help="file holding the bearer token (default: $SJFF_TOKEN)")
    ap.add_argument(
        "--token-for-inference",
        action="store_true",
        help="send the token with inference calls too (servers with --protect-inference)",
    )
    ap.add_argument("--tls", action="store_true", help="use TLS (system roots unless --ca)")
    ap.add_argument("--ca", help="CA certificate (PEM) that signed the server certificate")
    ap.add_argument("--cert", help="client certificate (PEM) for mutual TLS")
    ap.add_argument("--key", help="client private key (PEM) for mutual TLS")
    ap.add_argument("--server-name", help="expected server name in its certificate")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds per call (default 30)")
    ap.add_argument("--json", action="store_true", help="print JSON")
    sub = ap.add_subparsers(dest="command", required=True)

    def images(p, name="image"):
        p.add_argument(
            name, help="image file (PNG, JPEG, WebP, ...: needs sjff-client[images]), .npy, or IDX (with --index)"
        )
        p.add_argument("--index", type=int, default=0, help="first sample of an IDX file")
        p.add_argument("--count", type=int, default=1, help="samples of an IDX file (default 1)")
        p.add_argument(
            "--invert",
            choices=["auto", "yes", "no"],
            default="auto",
            help="make the digit bright on dark (default auto)",
        )

    p = sub.add_parser("infer", help="classify an image or IDX samples")
    images(p)
    p.add_argument("--labels", help="IDX label file, to print the true labels")
    p.add_argument("--seed", type=int, help="spike-encoding seed (spiking models)")
    p.add_argument("--steps", type=int, help="time steps (spiking models)")
    p.add_argument("--min-version", type=int, help="answer from this learning version or a later one (waits)")
    p.set_defaults(func=cmd_infer)
    p = sub.add_parser("learn", help="one on-line update with a label")
    images(p)
    p.add_argument("--label", type=int, help="the label shown with the image(s)")
    p.add_argument("--labels", help="IDX label file (instead of --label)")
    p.add_argument("--negative", action="store_true", help="the label is wrong (a negative sample)")
    p.add_argument("--eta", type=float, help="learning rate (default: the model's)")
    p.add_argument("--seed", type=int, help="spike-encoding seed")
    p.add_argument(
        "--request-id", help="idempotency key (default: a fresh uuid4): resend a learn whose answer was lost"
    )
    p.set_defaults(func=cmd_learn)
    p = sub.add_parser("stream", help="stream IDX samples: learn each (LearnStream) or infer (--infer)")
    p.add_argument("images", help="IDX image file")
    p.add_argument("--labels", required=True, help="IDX label file")
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--infer", action="store_true", help="ModelStreamInfer instead of learning")
    p.add_argument("--batch", type=int, default=1, help="images per streamed inference request")
    p.set_defaults(func=cmd_stream)
    p = sub.add_parser("stats", help="learning statistics")
    p.set_defaults(func=cmd_stats)
    p = sub.add_parser("versions", help="current version, snapshots, history")
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(func=cmd_versions)
    p = sub.add_parser("snapshot", help="write a snapshot now")
    p.add_argument("--export", action="store_true", help="also write a complete model file")
    p.set_defaults(func=cmd_snapshot)
    p = sub.add_parser("rollback", help="restore the weights of an earlier version")
    p.add_argument("to_version", type=int)
    p.set_defaults(func=cmd_rollback)
    p = sub.add_parser("health", help="liveness, readiness, server metadata")
    p.set_defaults(func=cmd_health)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.model_given = args.model is not None
    args.model = args.model or "mnist"
    try:
        with _client(args) as c:
            return args.func(args, c)
    except grpc.RpcError as exc:
        print(f"sjff_client: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    except (ImageError, OSError, ValueError) as exc:
        print(f"sjff_client: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
