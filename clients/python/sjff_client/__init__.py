"""Python client of the spikingjelly-ff server (numpy + grpcio + protobuf; the CLI reads image
files with Pillow, the optional `images` extra: `pip install 'sjff-client[images]'`).

- :class:`Client` / :class:`AsyncClient`: inference (Open Inference Protocol) and on-line
  learning (``spikingjelly_ff.v1.Learning``), against one server or several replicas
  (``targets=[...]``: learns retried on the next replica with the same request id).
- ``python -m sjff_client``: command line (infer / learn / stream / admin calls).
"""

from .client import (
    AsyncClient,
    Client,
    InferResult,
    LearnResult,
    RequestFailed,
    RetryPolicy,
    make_channel,
    outcome_unknown,
)

__all__ = [
    "AsyncClient",
    "Client",
    "InferResult",
    "LearnResult",
    "RequestFailed",
    "RetryPolicy",
    "make_channel",
    "outcome_unknown",
]
