"""On-line learning of one model version: the learner, its writer, computation, versions."""
