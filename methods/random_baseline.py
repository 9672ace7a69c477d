"""Random attribution: seeded random scores, the floor every attribution method must beat.

Not a method of the DualXDA paper (Anonymous et al., "DualXDA: Towards Sparse, Efficient and
Explainable Data Attribution in Large AI Models", ../shared/reference/dualxda-paper.md); it is the
sanity baseline of the benchmark: a metric on which a method does not beat it says nothing about
that method.

Notation (see :mod:`harness.protocols`): the attribution matrix ``A`` has shape
``(n_test, n_train)``; here ``A[j, :]`` is a vector of ``N = n_train`` i.i.d. draws

- ``distribution="uniform"``: ``A[j, i] ~ U[-1, 1)`` (symmetric, so that proponents and opponents
  occur as in real attributions);
- ``distribution="normal"``: ``A[j, i] ~ N(0, 1)``,

from a generator seeded by a stable hash of ``(config.seed, bytes of the test input x_j)``. The
row of a test point is therefore a pure function of the seed and of that point's content: it does
not depend on batching, call order, the target class, the global torch seed or the device.

Self-influence: ``N`` draws from the same distribution, from a generator seeded by the hash of
``(config.seed, "self", N)``: the floor of mislabel detection (about 0.5 in expectation).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch

from harness.config import Config, ConfigError, option
from harness.protocols import Method, Split

if TYPE_CHECKING:
    from torch import Tensor, nn

    from harness.cache import Artefact

log = logging.getLogger(__name__)

_DISTRIBUTIONS = ("uniform", "normal")


@dataclass(frozen=True, kw_only=True)
class RandomConfig(Config):
    """Configuration of :class:`RandomAttribution`."""

    seed: int = option(0, "seed mixed with each test input's bytes to seed its row of scores")
    distribution: Literal["uniform", "normal"] = option(
        "uniform", "distribution of the scores: uniform on [-1, 1) or standard normal"
    )

    def __post_init__(self) -> None:
        if self.distribution not in _DISTRIBUTIONS:
            raise ConfigError(
                f"distribution must be one of {list(_DISTRIBUTIONS)}, got {self.distribution!r}"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")


def row_seed(seed: int, row: Tensor) -> int:
    """A 63-bit generator seed from ``seed`` and the content (dtype, shape, bytes) of ``row``.

    Parameters
    ----------
    seed:
        The method's seed.
    row:
        ``(*input_shape)`` one test input, on any device.

    Returns
    -------
    int
        A non-negative integer below ``2**63`` (valid for ``torch.Generator.manual_seed``).
    """
    t = row.detach().cpu().contiguous()
    digest = hashlib.blake2b(digest_size=8)
    digest.update(f"{seed}|{t.dtype}|{tuple(t.shape)}|".encode())
    # A byte view works for every dtype (bfloat16 included), unlike Tensor.numpy().
    digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return int.from_bytes(digest.digest(), "little") & (2**63 - 1)


class RandomAttribution(Method):
    """Random scores per (seed, test input); see the module docstring."""

    Config = RandomConfig
    version = "1"
    supports = frozenset({"self_influence"})
    attributes_through = "none"
    self_influence_definition = "i.i.d. random draws (seeded): the floor of mislabel detection"
    cheap = True

    config: RandomConfig

    def __init__(self, config: RandomConfig | None = None) -> None:
        super().__init__(config)
        self.n_train_: int | None = None

    def load(self, artefact: Artefact, model: nn.Module, train: Split) -> None:
        """Keep the number of training points: the scores need nothing else (no cache)."""
        self.n_train_ = len(train)

    def explain(self, x: Tensor, targets: Tensor) -> Tensor:
        """Random scores for each test input.

        Parameters
        ----------
        x:
            ``(n_test, *input_shape)`` test inputs.
        targets:
            ``(n_test,)`` target classes (unused: the scores depend on the input only).

        Returns
        -------
        Tensor
            ``(n_test, n_train)`` float32 on ``x``'s device.
        """
        self._require_fitted()
        assert self.n_train_ is not None
        config = self.config
        rows = []
        generator = torch.Generator(device="cpu")  # CPU: identical draws on every device
        for row in x:
            generator.manual_seed(row_seed(config.seed, row))
            if config.distribution == "uniform":
                draws = torch.rand(self.n_train_, generator=generator) * 2.0 - 1.0
            else:
                draws = torch.randn(self.n_train_, generator=generator)
            rows.append(draws)
        if not rows:
            return torch.empty(0, self.n_train_, dtype=torch.float32, device=x.device)
        return torch.stack(rows).to(device=x.device, dtype=torch.float32)

    def self_influence(self) -> Tensor:
        """``(n_train,)`` float32 random draws, a pure function of the seed and ``n_train``."""
        self._require_fitted()
        assert self.n_train_ is not None
        config = self.config
        digest = hashlib.blake2b(f"{config.seed}|self|{self.n_train_}".encode(), digest_size=8)
        generator = torch.Generator().manual_seed(int.from_bytes(digest.digest(), "little") & (2**63 - 1))
        if config.distribution == "uniform":
            return torch.rand(self.n_train_, generator=generator) * 2.0 - 1.0
        return torch.randn(self.n_train_, generator=generator)
