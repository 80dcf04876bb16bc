"""Generate the Python gRPC stubs from ``protos/`` with grpcio-tools.

    python scripts/gen_protos.py            # writes clients/python/sjff_client/pb/
    python scripts/gen_protos.py --out DIR  # writes elsewhere (the up-to-date test uses this)

protoc names modules after the proto path (``inference/grpc_service.proto`` ->
``inference.grpc_service_pb2``) and imports them absolutely; we flatten them into one
package and make the imports package-relative, so the stubs work as ``sjff_client.pb``.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = ROOT / "protos"
OUT = ROOT / "clients" / "python" / "sjff_client" / "pb"
PROTOS = ["inference/grpc_service.proto", "spikingjelly_ff/v1/learning.proto"]
INIT = '''"""Generated protobuf and gRPC stubs (do not edit; regenerate with scripts/gen_protos.py).

- ``grpc_service_pb2`` / ``grpc_service_pb2_grpc``: Open Inference Protocol, package ``inference``.
- ``learning_pb2`` / ``learning_pb2_grpc``: on-line learning, package ``spikingjelly_ff.v1``.
"""
'''


def generate(out: Path) -> list[Path]:
    """Run protoc into ``out`` (created; existing stub files replaced). Returns the files."""
    import grpc_tools
    from grpc_tools import protoc

    include = Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *PROTOS,
        ]
        if protoc.main(args) != 0:
            raise RuntimeError("protoc failed: " + " ".join(args))
        out.mkdir(parents=True, exist_ok=True)
        modules = {Path(p).with_suffix("").as_posix().replace("/", "."): Path(p).stem for p in PROTOS}
        written = []
        for src in sorted(Path(tmp).rglob("*.py*")):
            text = src.read_text()
            for dotted, stem in modules.items():
                package, _, _ = dotted.rpartition(".")
                # "from inference import grpc_service_pb2 as x" -> "from . import grpc_service_pb2 as x"
                text = re.sub(
                    rf"^from {re.escape(package)} import ({stem}_pb2\w*)", r"from . import \1", text, flags=re.M
                )
                text = re.sub(rf"^import {re.escape(dotted)}_pb2 as", f"from . import {stem}_pb2 as", text, flags=re.M)
            dst = out / src.name
            dst.write_text(text)
            written.append(dst)
        init = out / "__init__.py"
        init.write_text(INIT)
        written.append(init)
    return sorted(written)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT, help=f"output package directory (default {OUT.relative_to(ROOT)})")
    ap.add_argument("--clean", action="store_true", help="remove the output directory first")
    args = ap.parse_args(argv)
    if args.clean and args.out.exists():
        shutil.rmtree(args.out)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
