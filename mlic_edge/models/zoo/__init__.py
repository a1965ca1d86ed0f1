"""One file per method; importing this package registers them all."""

from mlic_edge.models.zoo import baseline, mlgat, mlgcn, msrn, q2l, semdep  # noqa: F401
