"""Generated protobuf and gRPC stubs (do not edit; regenerate with scripts/gen_protos.py).

- ``grpc_service_pb2`` / ``grpc_service_pb2_grpc``: Open Inference Protocol, package ``inference``.
- ``learning_pb2`` / ``learning_pb2_grpc``: on-line learning, package ``spikingjelly_ff.v1``.
"""
