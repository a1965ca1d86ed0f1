"""Label-graph inputs of the graph models (ML-GCN, ML-GAT, MSRN): label word vectors and the co-occurrence
adjacency, computed from the training split (numpy only; stored in the run directory, folded into the ONNX).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mlic_edge.data.dataset import POSITIVE


@dataclass
class LabelGraph:
    """What a graph model needs at construction; never needed again after export (folded to constants)."""

    names: list[str]
    vectors: np.ndarray
    """float32 (C, D) label word vectors, in class order."""
    cooccurrence: np.ndarray
    """int64 (C, C): training images holding both i and j; zero diagonal (ML-GCN's ``adj`` pickle)."""
    counts: np.ndarray
    """int64 (C,): training images holding each class (ML-GCN's ``nums``)."""
    vectors_source: str = "unknown"

    def save(self, path) -> None:
        """label_graph.npz: what the run keeps of its label graph (names, vectors, co-occurrence, counts)."""
        with open(path, "wb") as handle:
            np.savez_compressed(handle, names=np.array(self.names), vectors=self.vectors,
                                cooccurrence=self.cooccurrence, counts=self.counts,
                                vectors_source=np.array(self.vectors_source))

    @classmethod
    def from_targets(cls, names: list[str], targets: np.ndarray, vectors: np.ndarray,
                     vectors_source: str = "unknown") -> "LabelGraph":
        positive = (np.asarray(targets) == POSITIVE).astype(np.int64)
        cooccurrence = positive.T @ positive
        counts = np.diag(cooccurrence).copy()
        np.fill_diagonal(cooccurrence, 0)
        return cls(list(names), np.asarray(vectors, np.float32), cooccurrence, counts, vectors_source)


def conditional_edges(cooccurrence: np.ndarray, counts: np.ndarray, tau: float = 0.4) -> np.ndarray:
    """B_ij = 1[P(L_j | L_i) >= tau], P(L_j | L_i) = cooc_ij / n_i (ML-GCN ``gen_A``), float64 (C, C)."""
    if not 0.0 < tau <= 1.0:
        raise ValueError(f"tau must be in (0, 1], got {tau} (a conditional probability threshold)")
    counts = np.asarray(counts, np.float64)
    probability = np.asarray(cooccurrence, np.float64) / np.maximum(counts[:, None], 1e-12)
    edges = (probability >= tau).astype(np.float64)
    np.fill_diagonal(edges, 0.0)
    return edges


def mlgcn_adjacency(cooccurrence: np.ndarray, counts: np.ndarray, tau: float = 0.4,
                    p: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """ML-GCN's re-weighted adjacency A and its normalised form Â (METHODS.md §1, check values there).

    A = p·B / (colsum(B) + 1e-6) + I — the reference code divides by column sums and uses weight 0.25 with a unit
    diagonal (the paper's p = 0.2 after dividing by 1.25). Â = D^{-1/2} Aᵀ D^{-1/2} with D = diag(rowsum(A)):
    transposed and asymmetric, as in the reference ``gen_adj``.
    """
    edges = conditional_edges(cooccurrence, counts, tau)
    a = p * edges / (edges.sum(axis=0, keepdims=True) + 1e-6) + np.eye(len(edges))
    d = np.power(a.sum(axis=1), -0.5)
    a_hat = (a @ np.diag(d)).T @ np.diag(d)
    return a.astype(np.float32), a_hat.astype(np.float32)
