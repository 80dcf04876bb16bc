"""Pure, torch-free math of FF learning: typed parameters, goodness, probability functions,
the Hebbian delta, neuron dynamics and the label code.

Every function takes numpy arrays or torch tensors (``_array`` picks the namespace from the
argument's type; torch is never imported here) and mutates nothing it does not return.
"""
