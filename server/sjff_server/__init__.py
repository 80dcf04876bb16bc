"""The spikingjelly-ff gRPC server (``sjff serve``): Open Inference Protocol inference and
continual on-line Hebbian learning. Torch-free: numpy, onnxruntime, h5py, grpcio.

Layers, each importing only those below it (``.importlinter``: nothing under ``protocol``
imports upward, and no core package imports grpc, protobuf or the client):

- top: the process. ``main`` (command line), ``app`` (assembly: services, health, TLS,
  metrics, shutdown), ``healthcheck`` (probe CLI), ``harness`` (a server in a child process);
- ``protocol/``: the only code that knows gRPC and the stubs: ``rpc`` (the one call wrapper
  and the one map from refusals to status codes), the two services, request decoding
  (``validation``) and answers (``messages``);
- core, protocol-free:
  - ``serving/``: the model repository on disk and the loaded model versions;
  - ``learning/``: a model's learner: queue with group commit, computation on a copy,
    versions (snapshots, rollback, retention), stats, options;
  - ``inference/``: engines over any runtime model, dynamic batching;
  - ``storage/``: the update object and log records, the log, snapshots, recovery, repair;
- shared leaves: ``errors`` (why a request is refused), ``auth``, ``metrics``, ``logs``,
  ``interrupt`` (interruptible worker threads), ``tuning`` (gRPC core's listener, CPU
  pinning, PM QoS).

Importing the package (and so any of its modules, the core ones included, though they never
name grpc themselves) imports grpc under :data:`tuning.POLLED_LISTENER`: gRPC core reads its
experiments once, when grpc is first imported, so this comes before any module of the server
imports it. ``GRPC_EXPERIMENTS_IN_FORCE`` says what was asked for (``sjff serve`` logs it, and
its ready file carries it); a grpcio that no longer knows the experiment says so on stderr
("Unknown experiment"), which tests/test_server_inference.py checks for the installed one.
"""

from .tuning import grpc_experiments

with grpc_experiments() as GRPC_EXPERIMENTS_IN_FORCE:
    import grpc  # noqa: F401 - imported here, under the setting: see above
