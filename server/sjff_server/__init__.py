"""The spikingjelly-ff gRPC server (``sjff serve``): Open Inference Protocol inference and
continual on-line Hebbian learning. Torch-free: numpy, onnxruntime, h5py, grpcio.

One module, one job:

- ``main``: command line; ``app``: assembly (services, health, reflection, TLS, metrics, shutdown)
- ``repository``: the model repository on disk; ``models``: loaded model versions
- ``engine``: onnxruntime / spike-runtime execution of one published weight set
- ``batching``: dynamic batching; ``interrupt``: interruptible worker threads (deadlines)
- ``validation``: request decoding and checks; ``registration``: tolerant deserializers
- ``inference_service`` / ``learning_service``: the two gRPC services; ``streams``: ordered streams
- ``learning``: ordered, durable, copy-on-write updates; ``durability``: update log + snapshots
- ``auth``: bearer tokens; ``metrics``: Prometheus; ``logs``: JSON logs
- ``healthcheck``: a health probe CLI; ``harness``: run a server in a child process (tests, benchmarks)
"""
