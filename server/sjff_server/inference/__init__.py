"""Execution of a published weight set (engines) and server-side dynamic batching."""
