"""The gRPC protocol layer: services, the call wrapper, request decoding and answers."""
