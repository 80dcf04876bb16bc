"""The .proto files, the generated stubs, and what the server imports."""

from __future__ import annotations

import filecmp
import subprocess
import sys

import serving_utils as su
from sjff_client.pb import grpc_service_pb2 as pb
from sjff_client.pb import learning_pb2 as lpb

PB = su.ROOT / "clients" / "python" / "sjff_client" / "pb"


def test_committed_stubs_are_up_to_date(tmp_path):
    p = subprocess.run(
        [sys.executable, str(su.ROOT / "scripts" / "gen_protos.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    fresh = sorted(f.name for f in tmp_path.iterdir() if f.is_file())
    committed = sorted(f.name for f in PB.iterdir() if f.is_file())
    assert fresh == committed
    diff = [name for name in fresh if not filecmp.cmp(tmp_path / name, PB / name, shallow=False)]
    assert not diff, f"stale generated stubs {diff}: run python scripts/gen_protos.py"


def _fields(message) -> dict[str, int]:
    return {f.name: f.number for f in message.DESCRIPTOR.fields}


def test_open_inference_protocol_field_numbers():
    """Names and numbers as in the KServe v2 / Triton grpc_service.proto (what clients rely on)."""
    assert pb.DESCRIPTOR.package == "inference"
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert [m.name for m in service.methods] == [
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
        "ModelStreamInfer",
    ]
    stream = service.methods_by_name["ModelStreamInfer"]
    assert stream.client_streaming and stream.server_streaming
    assert _fields(pb.ModelInferRequest) == {
        "model_name": 1,
        "model_version": 2,
        "id": 3,
        "parameters": 4,
        "inputs": 5,
        "outputs": 6,
        "raw_input_contents": 7,
    }
    assert _fields(pb.ModelInferRequest.InferInputTensor) == {
        "name": 1,
        "datatype": 2,
        "shape": 3,
        "parameters": 4,
        "contents": 5,
    }
    assert _fields(pb.ModelInferRequest.InferRequestedOutputTensor) == {"name": 1, "parameters": 2}
    assert _fields(pb.ModelInferResponse) == {
        "model_name": 1,
        "model_version": 2,
        "id": 3,
        "parameters": 4,
        "outputs": 5,
        "raw_output_contents": 6,
    }
    assert _fields(pb.ModelStreamInferResponse) == {"error_message": 1, "infer_response": 2}
    assert _fields(pb.InferParameter) == {
        "bool_param": 1,
        "int64_param": 2,
        "string_param": 3,
        "double_param": 4,
        "uint64_param": 5,
    }
    assert _fields(pb.InferTensorContents) == {
        "bool_contents": 1,
        "int_contents": 2,
        "int64_contents": 3,
        "uint_contents": 4,
        "uint64_contents": 5,
        "fp32_contents": 6,
        "fp64_contents": 7,
        "bytes_contents": 8,
    }
    assert _fields(pb.ModelMetadataResponse) == {"name": 1, "versions": 2, "platform": 3, "inputs": 4, "outputs": 5}
    assert _fields(pb.ModelMetadataResponse.TensorMetadata) == {"name": 1, "datatype": 2, "shape": 3}
    assert _fields(pb.ServerMetadataResponse) == {"name": 1, "version": 2, "extensions": 3}
    assert _fields(pb.ModelReadyRequest) == _fields(pb.ModelMetadataRequest) == {"name": 1, "version": 2}


def test_learning_service_is_versioned():
    assert lpb.DESCRIPTOR.package == "spikingjelly_ff.v1"
    methods = [m.name for m in lpb.DESCRIPTOR.services_by_name["Learning"].methods]
    assert methods == ["Learn", "LearnStream", "Snapshot", "ListVersions", "Rollback", "GetStats"]
    stream = lpb.DESCRIPTOR.services_by_name["Learning"].methods_by_name["LearnStream"]
    assert stream.client_streaming and stream.server_streaming


def test_server_imports_no_torch(sjff_models):
    """The server (and the runtimes it loads models with) must not need torch."""
    code = (
        "import sys\n"
        "for blocked in ('torch', 'torchvision', 'spikingjelly', 'yaml', 'safetensors', 'tqdm', 'nirtorch'):\n"
        "    sys.modules[blocked] = None\n"
        "import sjff_server.main, sjff_server.app\n"
        "from sjff_server.serving.models import load_served_model\n"
        "from sjff_server.serving.repository import ModelSpec, ServingConfig\n"
        "from sjff_server.interrupt import WorkerPool\n"
        "from sjff_server.learning.options import LearnOptions\n"
        "from pathlib import Path\n"
        f"for kind, p in (('analog', {str(sjff_models['analog'])!r}), ('spiking', {str(sjff_models['spike'])!r})):\n"
        "    spec = ModelSpec('m', '1', Path(p), kind, ServingConfig())\n"
        "    load_served_model(spec, state_dir=None, ort_threads=1, learn_options=LearnOptions(), pool=WorkerPool(1))\n"
        "print('ok')\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr[-3000:]
