"""The spikingjelly-ff gRPC server (``sjff serve``): Open Inference Protocol inference and
continual on-line Hebbian learning. Torch-free: numpy, onnxruntime, h5py, grpcio.

One module, one job. The protocol layer (the only modules that import grpc or the stubs):

- ``app``: assembly (services, health, reflection, TLS, metrics, shutdown)
- ``inference_service`` / ``learning_service``: the two gRPC services; ``rpc``: their common
  call wrapper (authorisation, metrics) and the one map from refusals to status codes
- ``validation``: request decoding and checks; ``messages``: answers; ``registration``:
  tolerant deserializers; ``healthcheck``: a health probe CLI

Below it, protocol-free (``errors``: why a request is refused):

- ``main``: command line; ``repository``: the model repository on disk; ``models``: loaded
  model versions; ``engine``: execution of one published weight set (any runtime model)
- ``batching`` / ``window``: dynamic batching; ``interrupt``: interruptible worker threads;
  ``streams``: ordered streams
- ``learning``: a model's learner; ``writer``: its queue with group commit; ``compute``:
  a group applied on a copy; ``versions``: snapshots, rollback, retention; ``stats``;
  ``options``; ``records`` (the update object and log frames), ``durability`` / ``scan``:
  the update log; ``snapshots``; ``state``: recovery and state at a version; ``repair``
- ``auth``: bearer tokens; ``metrics``: Prometheus; ``logs``: JSON logs; ``harness``: run a
  server in a child process (tests, benchmarks)
"""
