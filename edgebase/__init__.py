"""The ground floor: what every edgectl package may import, and which imports none of them.

- `edgebase.errors`: `HintedError`, the one shape of an error a person can act on (a message and a
  hint), which the toolchain's, the bundle's, the agent's and the registry client's errors share.
- `edgebase.deps`: optional dependencies, checked once and named by the extra that installs them,
  and the imports of TensorFlow and coremltools that keep them quiet and apart.
- `edgebase.durable`: writing a file so that a crash leaves the old one or the new one, never half.

Nothing here imports a heavy library at module level, nor any other edgectl package.
"""
