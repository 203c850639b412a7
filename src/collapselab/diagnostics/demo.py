"""Synthetic embedding sets that show each verdict: ``collapselab diagnose --demo``."""

from __future__ import annotations

import torch


def demo_sets(n: int = 1000, dim: int = 128, n_codes: int = 10, seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """Four labelled embedding sets with code probabilities, one per situation.

    - ``healthy``: a mixture of ``n_codes`` well-spread Gaussian clusters; codes = soft cluster
      assignments.
    - ``complete``: every embedding the same vector up to 1e-7 relative noise.

    Each set's code probabilities are computed from its own embeddings (softmax of −distance to
    the healthy cluster centres / 4), so the collapsed sets' codes collapse with them.
    - ``dimensional``: healthy-looking clusters squeezed into a 2-D subspace of ``dim``.
    - ``cluster``: healthy embeddings, but 95 % of samples take code 0 (the rest code 1).
    """
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % n_codes
    centres = torch.randn(n_codes, dim, generator=g) * 2.0
    healthy = centres[labels] + torch.randn(n, dim, generator=g)

    def soft(z: torch.Tensor) -> torch.Tensor:
        return torch.softmax(-torch.cdist(z, centres) / 4.0, dim=1)

    constant = torch.randn(1, dim, generator=g)
    complete = constant + 1e-7 * constant.norm() * torch.randn(n, dim, generator=g) / dim**0.5

    basis = torch.linalg.qr(torch.randn(dim, 2, generator=g))[0]
    plane = torch.randn(n_codes, 2, generator=g) * 3.0
    dimensional = (plane[labels] + torch.randn(n, 2, generator=g)) @ basis.T
    # the plane's own clusters define its codes (the healthy centres are far from the plane)
    plane_centres = plane @ basis.T

    def soft_plane(z: torch.Tensor) -> torch.Tensor:
        return torch.softmax(-torch.cdist(z, plane_centres) / 1.0, dim=1)

    collapsed_codes = torch.zeros(n, n_codes)
    collapsed_codes[:, 0] = 1.0
    collapsed_codes[: n // 20, 0], collapsed_codes[: n // 20, 1] = 0.0, 1.0

    return {
        "healthy": {"z": healthy, "codes": soft(healthy), "labels": labels},
        "complete": {"z": complete, "codes": soft(complete), "labels": labels},
        "dimensional": {"z": dimensional, "codes": soft_plane(dimensional), "labels": labels},
        "cluster": {"z": healthy, "codes": collapsed_codes, "labels": labels},
    }
