"""Learners: per-layer local-loss and Hebbian learners with ``.step()`` (as SpikingJelly's
``STDPLearner``), the batched analog Hebbian learner, and the fast spiking trainer/scorer.
They take typed parameters, never the run config."""

from spikingjelly_ff.learning.learners import HebbianLearner, LocalLossLearner

__all__ = ["HebbianLearner", "LocalLossLearner"]
