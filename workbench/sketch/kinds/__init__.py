"""The sketch kinds, one module per family; importing this package registers every kind with
`workbench.sketch.base.make`.

Paper constructions (Schioppa 2024): `sparse` (fjl), `fastfood` (ffd), `affd` (affd, afjl), `qk`.
Ours: `dense`, `sparse` (countsketch, srht), `kronecker`. Shared pieces: `hadamard` (the fast
Walsh-Hadamard transform) and `randomness` (one threefry draw turned into every distribution the
kinds need).
"""

from workbench.sketch.kinds import affd, dense, fastfood, kronecker, qk, sparse  # noqa: F401  (register kinds)
