"""One file per method; importing this package registers them all."""

from mlic_edge.models.zoo import baseline, q2l  # noqa: F401
