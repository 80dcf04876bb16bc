"""The Learner on a real analog model, for the durability tests: a learner, a crash, an update, a
refusal's status code and the in-process reference."""

from __future__ import annotations

import asyncio

import numpy as np
from sjff_server.inference.engine import make_engine
from sjff_server.learning.learner import Learner
from sjff_server.learning.options import LearnOptions
from sjff_server.protocol.rpc import status_of
from sjff_server.storage.records import Update

from spikingjelly_ff.runtime import load_exported


def make_learner(sjff_models, state, **opts) -> Learner:
    model = load_exported(sjff_models["analog"], threads=1)
    return Learner("mnist", "1", make_engine(model), model, sjff_models["analog"], state, LearnOptions(**opts))


async def started_learner(sjff_models, state, xs, labels, n: int, **opts) -> Learner:
    """A recovered, started learner (no snapshots unless ``opts`` ask for them) that has
    acknowledged ``n`` updates: sample i with seed i."""
    learner = make_learner(sjff_models, state, **{"snapshot_every": 0, "snapshot_interval_s": 0, **opts})
    learner.recover()
    await learner.start()
    for i in range(n):
        await learner.learn(job(xs[i : i + 1], labels[i], seed=i))
    return learner


def learn_and_crash(sjff_models, state, xs, labels, n, **opts):
    """``n`` updates (sample i, seed i) on a fresh learner, closed without a final snapshot (as a
    crash after the last acknowledgement would leave it); returns the weights it served."""

    async def run():
        learner = make_learner(sjff_models, state, **{"snapshot_interval_s": 0, **opts})
        learner.recover()
        await learner.start()
        for i in range(n):
            await learner.learn(job(xs[i : i + 1], labels[i], seed=i))
        weights = [w.copy() for w in learner.published.model.weights]
        await learner.close(final_snapshot=False)
        return weights

    return asyncio.run(run())


def job(x, label, seed=None, eta=None, positive=1.0, expected=None) -> Update:
    return Update(x, np.array([label], dtype=np.int64), np.array([positive], dtype=np.float32), seed, eta, expected)


def code(err: BaseException) -> str:
    """The gRPC status name a refusal is answered with."""
    return status_of(err)[0].name


def replay(sjff_models, updates):
    """Apply (x, label, seed, eta) updates to a fresh in-process model, the reference."""
    ref = load_exported(sjff_models["analog"], threads=1)
    for x, label, seed, eta in updates:
        ref.learn(x, np.array([label]), np.array([1.0], dtype=np.float32), seed=seed, eta=eta)
    return ref
