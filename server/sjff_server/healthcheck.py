"""Probe a server's ``grpc.health.v1`` endpoint; exit 0 if SERVING (for Docker HEALTHCHECK,
compose and exec probes).

    python -m sjff_server.healthcheck [--target localhost:8001] [--service NAME] [--ca PEM --cert PEM --key PEM]
"""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

__all__ = ["check", "main"]


def check(
    target: str,
    service: str = "",
    timeout: float = 3.0,
    ca: str | None = None,
    cert: str | None = None,
    key: str | None = None,
) -> str:
    """The serving status name of ``service`` at ``target`` (raises grpc.RpcError)."""
    if ca or cert:

        def read(p: str | None) -> bytes | None:
            return open(p, "rb").read() if p else None  # noqa: SIM115 - tiny files

        channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(read(ca), read(key), read(cert)))
    else:
        channel = grpc.insecure_channel(target)
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sjff_server.healthcheck", description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="localhost:8001")
    ap.add_argument("--service", default="", help="service name ('' = the whole server)")
    ap.add_argument("--timeout", type=float, default=3.0)
    ap.add_argument("--ca")
    ap.add_argument("--cert")
    ap.add_argument("--key")
    args = ap.parse_args(argv)
    try:
        status = check(args.target, args.service, args.timeout, args.ca, args.cert, args.key)
    except grpc.RpcError as exc:
        print(f"unhealthy: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    print(status)
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
