"""What both clients share: their targets (one or several replicas), the token, call options,
and the requests they build (numpy, grpcio and protobuf only)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence

from .channel import DEFAULT_TARGET, make_channel, read_token
from .messages import DEFAULT_MODEL, build_infer_request, build_learn_request
from .targets import RetryPolicy, Targets, split_targets

__all__ = ["ClientBase"]


class ClientBase:
    """Connection(s), token and call options; the subclasses make the calls.

    ``target`` (``host:port``) or ``targets`` (several replicas of one replicated deployment;
    ``"a:1,b:1"`` items are split): calls go to one target until it fails with a retryable
    status, then to the next. ``attempts``: calls tried at most per ``learn`` / ``infer``
    (default: one per target, so a single target never retries; the server applies a
    ``request_id`` once, so more are safe); ``backoff_s``: first wait between attempts, doubled
    each time (at most 1 s). Rules: ``targets.py``."""

    _aio = False

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        targets: Sequence[str] | None = None,
        model: str = DEFAULT_MODEL,
        token: str | None = None,
        token_file: str | os.PathLike | None = None,
        timeout: float | None = 30.0,
        token_for_inference: bool = False,
        attempts: int | None = None,
        backoff_s: float = 0.05,
        channel=None,
        **tls,
    ) -> None:
        names = split_targets(targets) if targets is not None else split_targets([target])
        if not names:
            raise ValueError("targets is empty: give at least one host:port")
        if channel is not None and len(names) > 1:
            raise ValueError("a given channel is one target: pass either channel or several targets")
        self.targets = names
        self.target = names[0]
        self.model = model
        self.timeout = timeout
        tok = read_token(token, token_file)
        self._metadata = (("authorization", f"Bearer {tok}"),) if tok else ()
        # the token goes only where it is needed: a server shares it with nobody else
        self._inference_metadata = self._metadata if token_for_inference else ()
        policy = RetryPolicy(len(names) if attempts is None else attempts, backoff_s)
        self._pool = Targets(names, lambda t: make_channel(t, asyncio=self._aio, **tls), policy, channel)
        # the first target's channel and stubs, for callers that make raw calls
        self.channel = self._pool.channels[0]
        self.inference, self.learning = self._pool.stubs[0]

    def _kw(self, timeout: float | None, *, token: bool = False) -> dict:
        """Call options: the token only for learning calls (``token``), or for every call if
        the client was made with ``token_for_inference``."""
        md = self._metadata if token else self._inference_metadata
        return {"timeout": self.timeout if timeout is None else timeout, "metadata": md}

    def _model(self, model: str | None) -> str:
        return model or self.model

    def _learn_request(self, images, labels, positive, model, version, seed, eta, expected_version, request_id):
        """A LearnRequest with its idempotency key: ``request_id``, else a fresh uuid4."""
        return build_learn_request(
            images,
            labels,
            positive,
            self._model(model),
            version,
            seed=seed,
            eta=eta,
            expected_version=expected_version,
            request_id=request_id or str(uuid.uuid4()),
        )

    def _infer_request(self, images, model, version, outputs, params, raw, request_id):
        return build_infer_request(
            images, self._model(model), version, outputs=outputs, parameters=params, raw=raw, request_id=request_id
        )
