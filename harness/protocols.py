"""The three protocols every plug-in follows: :class:`Method`, :class:`Task`, :class:`Metric`.

``methods/`` and ``tasks/`` import this module (and :mod:`harness.config`, :mod:`harness.cache`)
and nothing else of the harness; the runner talks to plug-ins only through these classes, so it
never imports a concrete method or task. A metric's :class:`Reader` says what it keeps of the
explanations, which a run streams past it one chunk of test points at a time.

Notation (DualXDA paper, ../shared/reference/dualxda-paper.md): a training set
``{(x_i, y_i)}_{i<N}``, a model ``f = classifier . features`` with penultimate features
``phi(x) = features(x)``, and an attribution matrix ``A`` of shape ``(n_test, n_train)`` whose entry
``A[j, i]`` says how much training point ``i`` supports the prediction for test point ``j`` of the
target class (always the model's *predicted* class in this benchmark).
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

import harness.config
from harness.config import Config, ConfigError, option

if TYPE_CHECKING:  # torch is imported lazily: `dabench list` must stay instant
    import torch
    from torch import Tensor, nn

    from harness.cache import Artefact, Cache


class NotFittedError(RuntimeError):
    """explain()/self_influence() called before fit()."""


class CapabilityError(RuntimeError):
    """A plug-in was asked for something it does not declare (e.g. self-influence)."""


class DataError(ValueError):
    """Data is missing, malformed or too small for the request; the message names the fix."""


# =============================================================================================
# Data
# =============================================================================================
@dataclass(frozen=True)
class Normaliser:
    """How a split's stored inputs become the model's inputs; applied per batch, on the CPU.

    ``inputs = (stored.to(float32) / divisor - mean) / std``, in exactly the steps the image tasks
    always took on their whole float tensors, so a batch is bitwise the rows of that old tensor:

    - ``divisor`` None: the stored inputs already are the model's floats (the toy task, tests) and
      pass through in their own dtype (a slice is then a view of the stored tensor, not a copy);
      otherwise they are integers as decoded (uint8 pixels; int16 where the mark variant's
      watermark needs a value above 255) and become float32 divided by ``divisor`` (255.0: [0, 1]
      pixel space; MNIST's file holds k/256, so 256.0);
    - ``mean``, ``std``: empty (no shift), one value (Python scalars, as MNIST always used) or one
      per channel (dimension 1, float32 tensors of shape ``(1, C, 1, ...)``, as CIFAR-10 and AwA2).

    Frozen and picklable: it travels with a :class:`Split` to worker processes.
    """

    divisor: float | None = None
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.divisor is not None and not self.divisor > 0:
            raise DataError(f"Normaliser: divisor must be > 0 or None, got {self.divisor!r}")
        if len(self.mean) != len(self.std) or any(s == 0 for s in self.std):
            raise DataError(
                f"Normaliser: mean {self.mean} and std {self.std} need one value each per channel, std != 0"
            )

    @property
    def full_scale(self) -> float:
        """The stored value of full intensity (pixel value 1.0): ``divisor``, or 1.0 for floats."""
        return 1.0 if self.divisor is None else float(self.divisor)

    def output_dtype(self, stored_dtype: torch.dtype) -> torch.dtype:
        """The dtype of the model's inputs made from stored inputs of ``stored_dtype``."""
        import torch

        return stored_dtype if self.divisor is None else torch.float32

    def __call__(self, stored: Tensor) -> Tensor:
        """Model inputs ``(n, *input_shape)`` from stored rows ``(n, *input_shape)`` (a new tensor
        whenever anything is computed; the stored rows are never modified)."""
        import torch

        if self.divisor is None:
            if not self.mean:
                return stored
            x = stored.clone()  # the steps below work in place (the same kernels as out of place)
        else:
            x = stored.to(torch.float32, copy=True).div_(self.divisor)
        if not self.mean:
            return x
        if len(self.mean) == 1:
            return x.sub_(self.mean[0]).div_(self.std[0])
        shape = (1, len(self.mean), *([1] * (x.dim() - 2)))
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(shape)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(shape)
        return x.sub_(mean).div_(std)


#: Stored inputs that already are the model's inputs.
IDENTITY = Normaliser()

#: Bytes of normalised inputs per batch when a whole split is streamed (its fingerprint).
STREAM_BYTES = 16 * 2**20


class Inputs:
    """The model inputs of a :class:`Split`, normalised when read: ``split.inputs[index]``.

    A read-only view with the reading interface of a tensor of shape ``(n, *input_shape)``:
    ``len()``, ``shape``, ``dtype`` and indexing by an int (one input, ``(*input_shape)``), a slice
    or a ``(k,)`` long or bool tensor (or list) of positions (``(k, *input_shape)``). Each read
    gathers the stored rows and applies the split's :class:`Normaliser`, so it costs the rows read;
    reading everything (``inputs[:]``, :meth:`Split.materialise`) materialises the whole split in
    float32, which image tasks at full size must not do. There is no ``.to()``: move what you read.

    Code that only slices (``len(x)``, ``x[i : i + b].to(device)``) takes an :class:`Inputs` or a
    tensor alike.
    """

    __slots__ = ("stored", "normaliser")

    def __init__(self, stored: Tensor, normaliser: Normaliser = IDENTITY) -> None:
        self.stored = stored
        self.normaliser = normaliser

    def __len__(self) -> int:
        return int(self.stored.shape[0])

    @property
    def shape(self) -> torch.Size:
        """``(n, *input_shape)``, as the normalised tensor would have."""
        return self.stored.shape

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of what a read returns (float32 for integer-stored images)."""
        return self.normaliser.output_dtype(self.stored.dtype)

    def __getitem__(self, index: int | slice | Tensor | Sequence[int]) -> Tensor:
        import torch

        if isinstance(index, slice):
            return self.normaliser(self.stored[index])
        if isinstance(index, torch.Tensor) and index.dim() > 0:
            return self.normaliser(self.stored[index.cpu()])
        if isinstance(index, tuple):
            raise TypeError(
                "Inputs: index rows only (an int, a slice or positions); read rows, then index them"
            )
        if isinstance(index, Sequence) and not isinstance(index, str | bytes):
            return self.normaliser(self.stored[torch.as_tensor(index, dtype=torch.long)])
        if isinstance(index, bool) or not hasattr(index, "__index__"):
            raise TypeError(
                f"Inputs: index with an int, a slice or a tensor of positions, not {type(index).__name__}"
            )
        position = int(index.__index__())  # an int, a NumPy integer or a 0-dim integer tensor
        return self.normaliser(self.stored[position].unsqueeze(0))[0]

    def batches(self, batch_size: int) -> Iterator[Tensor]:
        """Consecutive batches of ``batch_size`` rows (the last may be shorter)."""
        for start in range(0, len(self), batch_size):
            yield self[start : start + batch_size]

    def stream_rows(self) -> int:
        """Rows per batch when the whole split is streamed: about :data:`STREAM_BYTES` of inputs."""
        per_row = max(1, self.stored[0].numel() if len(self) else 1) * 4
        return max(1, STREAM_BYTES // per_row)

    def __repr__(self) -> str:
        return f"Inputs(shape={tuple(self.shape)}, stored={self.stored.dtype}, {self.normaliser})"


@dataclass
class Split:
    """One data split: inputs stored compactly (as decoded), labels, per-point facts.

    Image tasks store their pixels as decoded (uint8; 29,870 AwA2 training images at 224 px are
    4.5 GB instead of the 18 GB of float32) and normalise them per batch where they are read:
    ``split.inputs[i : j]``, ``split.batches(b)``. Every batch is bitwise the rows of the float32
    tensor the split used to hold, and :meth:`fingerprint` is that tensor's digest. Measured peak
    RSS of loading a task in a fresh process (``python -m harness.load_memory``): MNIST 0.9 GiB
    (was 1.3), CIFAR-10 0.9 GiB (was 2.6), AwA2 at 224 px about 6 GiB for all 37,322 images
    (extrapolated from 4,000 and 16,000 fake JPEGs; was about 60 GiB).

    Attributes
    ----------
    stored: (n, *input_shape) tensor on the CPU: uint8 (int16 under a watermark that needs 256)
        pixels for image tasks, or the model's float inputs (with the identity normaliser).
    y: (n,) long tensor: the labels the model was TRAINED on for the train split (e.g. the flipped
        labels of the corrupt variant, the superclass of the group variant); true labels otherwise.
    meta: per-variant extras as ``(n,)`` tensors (they follow reordering and cutting):
        ``fine_labels`` long (group), ``true_labels`` long and ``flipped`` bool (corrupt),
        ``marked`` bool (mark), ``indices`` long (positions in the source dataset); see
        :mod:`tasks.variants`.
    normaliser: stored rows -> model inputs (:class:`Normaliser`; the identity by default).

    Reading the inputs: :attr:`inputs` (a view indexed like a tensor, normalised on access),
    :meth:`batches`, and, explicitly materialising the whole split in float32, :meth:`materialise`
    (the toy task and tests; never an image task at full size).
    """

    name: str
    stored: Tensor
    y: Tensor
    meta: dict[str, Any] = field(default_factory=dict)
    normaliser: Normaliser = IDENTITY
    # init=False: dataclasses.replace() never carries a stale hash over to changed inputs or labels
    _fingerprint: str | None = field(default=None, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def inputs(self) -> Inputs:
        """The model inputs, normalised when read (see :class:`Inputs`)."""
        return Inputs(self.stored, self.normaliser)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one input."""
        return tuple(self.stored.shape[1:])

    def batches(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield ``(inputs, y)`` batches in order (no shuffling), the inputs normalised."""
        inputs = self.inputs
        for start in range(0, len(self), batch_size):
            yield inputs[start : start + batch_size], self.y[start : start + batch_size]

    def materialise(self) -> Tensor:
        """All inputs as one normalised tensor ``(n, *input_shape)``: MATERIALISES the whole split.

        For the toy task and tests. An image task at full size does not fit (AwA2's training split
        is 18 GB in float32): read :attr:`inputs` by rows or :meth:`batches` instead. With the
        identity normaliser this is the stored tensor itself (no copy: do not modify it).
        """
        return self.inputs[:]

    def stored_bytes(self) -> int:
        """Bytes the stored inputs take."""
        return self.stored.element_size() * self.stored.nelement()

    def fingerprint(self) -> str:
        """Content hash of the normalised inputs and the labels (memoised): the key of every cache
        built on them.

        The digest of the float tensor the split used to hold (its ``str((shape, dtype))``, its
        bytes, then the same for ``y``), computed batch by batch: blake2b is a stream, so the
        normalised batches hashed one after another give the whole tensor's digest.
        """
        if self._fingerprint is None:
            digest = hashlib.blake2b(digest_size=16)
            inputs = self.inputs
            digest.update(str((tuple(inputs.shape), str(inputs.dtype))).encode())
            for batch in inputs.batches(inputs.stream_rows()):
                digest.update(batch.detach().cpu().contiguous().numpy().data)  # no copy
            y = self.y.detach().cpu().contiguous()
            digest.update(str((tuple(y.shape), str(y.dtype))).encode())
            digest.update(y.numpy().tobytes())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def take(self, index: Tensor, name: str | None = None) -> Split:
        """The points ``index`` ``(k,)`` (positions, in that order): a new split whose stored rows
        are a copy; per-point meta entries follow.

        A meta entry is per-point when it has a ``shape`` whose first dimension is ``len(self)``;
        other entries are kept as they are.
        """
        index = index.detach().cpu()
        n = len(self)
        meta = {}
        for key, value in self.meta.items():
            per_point = getattr(value, "shape", None) is not None and value.shape[:1] == (n,)
            meta[key] = value[index] if per_point else value
        return Split(name or self.name, self.stored[index], self.y[index], meta, self.normaliser)

    def subset(self, n: int, name: str | None = None) -> Split:
        """The first ``n`` points (meta entries indexed per point are cut alike); a view, no copy."""
        cut_meta = {}
        for key, value in self.meta.items():
            per_point = getattr(value, "shape", None) is not None and value.shape[:1] == self.y.shape
            cut_meta[key] = value[:n] if per_point else value
        return Split(name or self.name, self.stored[:n], self.y[:n], cut_meta, self.normaliser)


@dataclass
class TaskData:
    """What a task loads: three splits plus what metrics need to know about them."""

    train: Split
    val: Split
    test: Split
    num_classes: int
    variant: str
    input_shape: tuple[int, ...]


# =============================================================================================
# Models
# =============================================================================================
def feature_split(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """``(features, classifier)`` of a model: ``model(x) == classifier(features(x))``.

    Every task's model exposes these two attributes; methods that work on penultimate features
    (DualDA, Representer Points, feature similarity, last-layer influence) call this.
    """
    features = getattr(model, "features", None)
    classifier = getattr(model, "classifier", None)
    if features is None or classifier is None:
        raise CapabilityError(
            f"model {type(model).__name__} has no `features`/`classifier` split; give it two "
            "sub-modules so that model(x) == model.classifier(model.features(x))"
        )
    return features, classifier


def penultimate_features(
    model: nn.Module, x: Tensor | Inputs, batch_size: int, device: torch.device
) -> Tensor:
    """``phi(x)``: ``(n, d)`` float32 outputs of ``model.features`` (flattened), on ``device``.

    Batched, no grad, the model in eval mode (its mode is restored after). ``x`` is
    ``(n, *input_shape)`` on any device, or a split's :class:`Inputs` (``train.inputs``: read a
    batch at a time, never whole). For methods that work on penultimate features.
    """
    import torch

    features, _ = feature_split(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            parts = [
                features(x[i : i + batch_size].to(device)).flatten(start_dim=1).float()
                for i in range(0, len(x), batch_size)
            ]
    finally:
        model.train(was_training)
    return torch.cat(parts) if parts else torch.empty(0, 0, device=device)


def _device_of(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (or buffer); the CPU for a model with neither."""
    import itertools

    import torch

    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    return first.device if first is not None else torch.device("cpu")


# =============================================================================================
# Method
# =============================================================================================
class Method(ABC):
    """A data attribution method (scikit-learn lifecycle, TRAK-like stages).

    What a method writes (the rest is this base class' plumbing):

    - ``Config``: a frozen :class:`~harness.config.Config` (presets ``paper()``, ``quick()``, and
      ``smoke()`` for the 48-point toy task of ``dabench check``; ``sweep()`` for a grid the suites run);
    - :meth:`explain` (required), and :meth:`self_influence` where ``supports`` says so;
    - optionally :meth:`compute` (the expensive, cacheable work, a pure function of model and
      training data returning an :class:`~harness.cache.Artefact`), :meth:`load` (set the fitted
      state from that artefact; runs on a cache miss and on a hit alike, so both give the same
      scores) and :meth:`setup` (cheap checks and objects that both need).

    :meth:`fit` is the base class': it records ``model_`` and ``device_``, calls :meth:`setup`,
    looks :meth:`cache_key` up in the cache (methods that declare ``"cache"``), calls
    :meth:`compute` only on a miss, then :meth:`load`, and marks the method fitted. The cache key is
    (cache name, version, the config without ``cache_ignores``, training-data fingerprint, model
    fingerprint, :meth:`cache_key_extra`); a method never builds one by hand.

    ``supports`` declares capabilities, the harness asks (it never branches on a method's name):

    - ``"self_influence"``: :meth:`self_influence` is implemented (mislabel detection reads it);
    - ``"sparse"``: explanations contain exact zeros by construction;
    - ``"cache"``: :meth:`fit` stores :meth:`compute`'s artefact in the cache it is given;
    - ``"feature_decomposition"``: the attribution is a sum over the penultimate features,
      ``a_i(x) = sum_k alpha_i^c phi_k(x) phi_k(x_i)``, and :meth:`feature_relevance` returns its
      terms (XDA, :mod:`xda`, propagates them into the input images with LRP).

    ``attributes_through`` and ``self_influence_definition`` say, in words, which layers the
    attributions go through and how self-influence is defined; both land in every record (a method
    may refine them in :meth:`load`, when they depend on the model). Facts known only after fitting
    (tracked modules, support size) come back through :meth:`diagnostics`.

    The harness times :meth:`fit`, :meth:`explain` and :meth:`self_influence`; methods do not.
    Before the timed fit it calls :meth:`warm_up` once and records that time apart
    (``timings.warmup_s``): one-off process costs (compiling kernels, importing a library) are not
    a method's cost.
    """

    Config: ClassVar[type[Config]] = Config
    name: ClassVar[str] = ""  # set by the registry
    version: ClassVar[str] = "1"
    supports: ClassVar[frozenset[str]] = frozenset()
    #: What the attributions are computed through, in words: "all parameters", "last layer
    #: (classifier weight and bias)", "penultimate features", "inputs", "none".
    attributes_through: ClassVar[str] = "none"
    #: The self-influence definition in the paper's terms ("" without self-influence support).
    self_influence_definition: ClassVar[str] = ""
    #: Names the method's cache entries ("": the registered name). Two methods whose fits are equal
    #: still keep their own entries, so that each cold fit is its own cost.
    cache_name: ClassVar[str] = ""
    #: Config fields that do not change :meth:`compute`'s artefact: left out of the cache key, so
    #: that settings that only change :meth:`explain` share one entry.
    cache_ignores: ClassVar[frozenset[str]] = frozenset()
    #: Cheap enough for all 60,000 MNIST training points on a CPU (the ``full`` suite runs these).
    cheap: ClassVar[bool] = False

    def __init__(self, config: harness.config.Config | None = None) -> None:
        if config is None:
            config = self.Config()
        if not isinstance(config, self.Config):
            raise ConfigError(
                f"{type(self).__name__} takes a {self.Config.__qualname__}, got {type(config).__name__}"
            )
        self.config = config
        self._fitted = False
        #: The model given to :meth:`fit` and the device it sits on (set by :meth:`fit`).
        self.model_: nn.Module | None = None
        self.device_: torch.device | None = None
        #: Whether the last :meth:`fit` read its artefact from the cache.
        self.from_cache_ = False

    @classmethod
    def serves(cls, metric: type[Metric] | Metric) -> bool:
        """Whether this method gives everything ``metric`` reads (``Metric.needs``).

        Explanations every method gives; self-influence only a method that declares
        ``"self_influence"``. Suites plan a metric for a method only where this holds.
        """
        gives = {"explanations"} | ({"self_influence"} if "self_influence" in cls.supports else set())
        return set(metric.needs) <= gives

    # ----- what a method writes ----------------------------------------------------------------
    def setup(self, model: nn.Module, train: Split) -> None:
        """Check the inputs and build what :meth:`compute` and :meth:`load` both need (cheap).

        Runs on every :meth:`fit`, hit or miss, before the cache is consulted. Raise
        :class:`DataError` (naming the fix) for inputs the method cannot use. Default: nothing.
        """
        return None

    def compute(self, model: nn.Module, train: Split) -> Artefact:
        """The expensive, cacheable work; called by :meth:`fit` only on a cache miss.

        A pure function of ``model``, ``train`` and the config: it returns tensors (CPU or any
        device; the cache stores them on the CPU), JSON-able ``meta``, and optionally a ``folder``
        that a library wrote (see :meth:`scratch_dir`), which the cache moves into the entry. Sets no
        attribute that :meth:`load` does not set too. Default: an empty artefact.
        """
        from harness.cache import Artefact

        return Artefact()

    def load(self, artefact: Artefact, model: nn.Module, train: Split) -> None:
        """Set the fitted state from ``artefact`` (fresh from :meth:`compute` or read from the cache).

        Both paths run this same code, so a cache hit gives the scores of a cold fit; tensors read
        from the cache are on the CPU (move them to ``self.device_``). Default: nothing.
        """
        return None

    def cache_key_extra(self, model: nn.Module, train: Split) -> dict[str, Any]:
        """Key entries beyond the config and the fingerprints (e.g. a library's version). Default: none."""
        return {}

    # ----- owned by the base class ---------------------------------------------------------------
    def fit(self, model: nn.Module, train: Split, *, cache: Cache) -> None:
        """All expensive, cacheable work (``model`` is in eval mode on its device).

        Parameters
        ----------
        model:
            The trained model; kept as ``model_``, its device as ``device_``.
        train:
            The training split the attributions refer to.
        cache:
            Where :meth:`compute`'s artefact is stored under :meth:`cache_key` (methods that declare
            ``"cache"``); otherwise :meth:`compute` runs on every fit.
        """
        self._fitted = False
        self.model_ = model
        self.device_ = _device_of(model)
        self.setup(model, train)
        if "cache" in self.supports:
            misses = cache.stats.misses
            artefact = cache.get_or_create(self.cache_key(model, train), lambda: self.compute(model, train))
            self.from_cache_ = cache.stats.misses == misses
        else:
            artefact = self.compute(model, train)
            self.from_cache_ = False
        self.load(artefact, model, train)
        self._fitted = True

    def cache_key(self, model: nn.Module, train: Split) -> dict[str, Any]:
        """The content key of :meth:`compute`'s artefact for ``model`` and ``train``."""
        from harness.measures import model_fingerprint

        config = {k: v for k, v in self.config.to_dict().items() if k not in self.cache_ignores}
        return {
            "method": self.cache_name or self.name or type(self).__name__,
            "version": self.version,
            "config": config,
            "train": train.fingerprint(),
            "model": model_fingerprint(model),
            **self.cache_key_extra(model, train),
        }

    def scratch_dir(self) -> Path:
        """A fresh temporary folder, removed with this instance (for a library's files).

        A :meth:`compute` that has a library write a folder (kronfluence's factors, traker's
        store) writes it here and returns ``Artefact(folder=...)``; the cache moves it into the
        entry (locked, atomic, key-checked like every entry) and :meth:`load` reads it from
        ``artefact.folder``.
        """
        import shutil
        import tempfile
        import weakref

        path = Path(tempfile.mkdtemp(prefix=f"dabench-{self.name or type(self).__name__}-"))
        weakref.finalize(self, shutil.rmtree, path, True)
        return path

    def warm_up(self, device: torch.device) -> None:
        """Pay this process' one-off costs before the timed fit (default: nothing).

        Called by the harness once per run, before :meth:`fit`, and timed apart from it. A method
        compiles its kernels here on a tiny problem of its own (DualDA's numba solver) or imports
        the library it wraps; it must not touch the run's model or data, so nothing it does can be
        a cached result of the fit. ``device`` is where the fit will run.
        """
        return None

    def preferred_batch_size(self) -> int | None:
        """Test points per :meth:`explain` call that the method's settings prescribe, or None.

        None (the default) lets the harness choose (its ``--batch-size``). Methods whose cost is
        amortised over a batch (LiSSA's recursion, EK-FAC's pass over the training gradients)
        return the paper's explain batch from their config: the batch is part of what the speedup
        table measures, and the record states it.
        """
        return None

    @abstractmethod
    def explain(self, x: Tensor, targets: Tensor) -> Tensor:
        """Attributions ``(n_test, n_train)`` float32 for inputs ``x`` and target classes ``(n_test,)``."""

    def self_influence(self) -> Tensor:
        """``(n_train,)`` self-influence scores (mislabel detection ranks by them)."""
        raise CapabilityError(f"method {self.name!r} does not support self-influence")

    def feature_relevance(self, x: Tensor, target: int | Tensor, train_indices: Tensor) -> Tensor:
        """Per-feature terms of the attributions of training points ``train_indices`` for one input.

        Parameters
        ----------
        x:
            ``(1, *input_shape)`` or ``(*input_shape)``: one test input.
        target:
            The class explained (the model's prediction), an int or a one-element tensor.
        train_indices:
            ``(m,)`` long: positions in the training split given to :meth:`fit`.

        Returns
        -------
        Tensor
            ``(m, d)`` float64 on the model's device: ``[j, k] = alpha_i^c phi_k(x) phi_k(x_i)``
            for ``i = train_indices[j]``; row ``j`` sums to ``explain(x, target)[0, i]``.
        """
        raise CapabilityError(
            f"method {self.name!r} does not support feature_decomposition (its attributions are not "
            "a sum over penultimate features)"
        )

    def diagnostics(self) -> dict[str, Any]:
        """Method-specific numbers for the record (e.g. number of support vectors)."""
        return {}

    def _require_fitted(self) -> None:
        if not self._fitted:
            raise NotFittedError(
                f"method {self.name or type(self).__name__!r}: call fit(model, train, cache=...) "
                "before explain() or self_influence()"
            )


# =============================================================================================
# Task
# =============================================================================================
@dataclass(frozen=True, kw_only=True)
class TaskConfig(Config):
    """Options every task has. Tasks subclass it to add training settings."""

    variant: str = option("std", "dataset variant: std, group, corrupt or mark (see the task)")
    n_train: int | None = option(None, "use only the first N training points (None: all)")
    n_test: int | None = option(None, "explain only the first N test points (None: all)")
    data_root: str | None = option(None, "directory holding the on-disk dataset (tasks that need one)")


@dataclass
class Checkpoint:
    """Weights saved during training (after ``epoch``) and the learning rate then in force.

    TracIn sums over checkpoints, each weighted by its learning rate (DualXDA paper's setting).
    """

    epoch: int
    lr: float
    state: dict[str, Tensor]


@dataclass
class TrainedModel:
    """A trained model, how it was trained, and the checkpoints kept on the way (oldest first)."""

    model: nn.Module
    history: dict[str, Any] = field(default_factory=dict)
    checkpoints: list[Checkpoint] = field(default_factory=list)


#: Attribute under which the harness attaches the training checkpoints to a loaded model.
CHECKPOINTS_ATTR = "training_checkpoints"


def training_checkpoints(model: nn.Module) -> list[Checkpoint]:
    """The checkpoints kept while ``model`` was trained (oldest first; the last is the final model).

    Raises
    ------
    CapabilityError
        When the model carries none: the task's ``train_model`` must return them
        (``TrainedModel(checkpoints=...)``; :func:`tasks.training.train_task_model` keeps them).
    """
    checkpoints = getattr(model, CHECKPOINTS_ATTR, None)
    if not checkpoints:
        raise CapabilityError(
            f"model {type(model).__name__} carries no training checkpoints; load it through the harness "
            "(get_or_train_model) from a task whose train_model returns TrainedModel(checkpoints=...)"
        )
    return list(checkpoints)


class Task(ABC):
    """A dataset with its variants, a model architecture and its training recipe."""

    Config: ClassVar[type[TaskConfig]] = TaskConfig
    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    variants: ClassVar[tuple[str, ...]] = ("std",)
    architecture: ClassVar[str] = ""
    #: The dataset is read from ``--data-root`` (not embedded): suites pass the folder on to it.
    needs_data_root: ClassVar[bool] = False

    def __init__(self, config: TaskConfig | None = None) -> None:
        config = config if config is not None else self.Config()
        if config.variant not in self.variants:
            raise ConfigError(
                f"task {self.name!r} has no variant {config.variant!r}; choose one of {list(self.variants)}"
            )
        for key in ("n_train", "n_test"):
            value = getattr(config, key)
            if value is not None and value < 1:
                raise ConfigError(f"{key} must be a positive number of points, got {value}")
        if config.data_root is not None and not os.path.isdir(config.data_root):
            raise DataError(
                f"data directory {config.data_root!r} does not exist; pass --data-root with the "
                f"folder that holds the {self.name or 'task'} dataset"
            )
        self.config = config

    @abstractmethod
    def load(self) -> TaskData:
        """Load the splits with the variant applied and ``n_train``/``n_test`` honoured.

        Raises :class:`DataError` (naming the fix) when data is missing or a size is too large.
        """

    @abstractmethod
    def build_model(self) -> nn.Module:
        """A fresh, untrained model with ``features`` and ``classifier`` sub-modules."""

    @abstractmethod
    def train_model(self, model: nn.Module, data: TaskData, *, device: torch.device) -> TrainedModel:
        """Train ``model`` on ``data.train``. The harness seeds torch before calling."""

    def training_config(self) -> dict[str, Any]:
        """Everything that changes the trained weights besides data, variant and seed."""
        skip = {"n_test", "data_root"}
        return {k: v for k, v in self.config.to_dict().items() if k not in skip}


# =============================================================================================
# Metric
# =============================================================================================
class Counterfactuals(ABC):
    """Models retrained on subsets of the training set, for metrics that retrain (LDS, coreset
    selection, data pruning). The harness provides it (:class:`harness.retrain.Retrainer`): models
    are trained with the task's own recipe and the run's seed, cached by content hash and shared by
    every method of a grid."""

    @abstractmethod
    def evaluate(
        self,
        subsets: Sequence[Tensor],
        evaluate: Callable[[nn.Module], Tensor],
        *,
        purpose: str,
        epochs: int | None = None,
    ) -> list[Tensor]:
        """``[evaluate(model_k) for each subset k]``, ``model_k`` trained on ``train[subsets[k]]``.

        Parameters
        ----------
        subsets:
            Each a ``(m_k,)`` long tensor of positions in ``data.train`` (order does not matter: a
            subset is a set, so equal sets share one model).
        evaluate:
            Called once per model (in eval mode, on the run's device); its result is kept, the model
            is not.
        purpose:
            Shown on the progress bar ("lds", "coreset_selection", ...).
        epochs:
            Training epochs instead of the task's own (None: as many optimiser steps as the full
            model, through the task's ``steps`` option).
        """


class Reader(ABC):
    """What one metric keeps of the attribution matrix, which it sees one chunk of test points at a time.

    A run never holds the whole ``(n_test, n_train)`` matrix: the runner explains the test points in
    chunks (the method's explain batch), hands each chunk to every metric's reader
    (:meth:`update`: in test order, every row exactly once) and drops it. The metric's
    :meth:`Metric.compute` then reads what its reader kept (:meth:`MetricContext.read`): top-k
    indices, a score per test point, a sum per training point, the sums over fixed training
    subsets. Such summaries do not grow with ``n_test x n_train``; only :class:`WholeMatrix` does.
    """

    @abstractmethod
    def update(self, rows: slice, chunk: Tensor) -> None:
        """Take the attributions of the test points ``rows``.

        Parameters
        ----------
        rows:
            Positions in ``data.test`` (``step`` None).
        chunk:
            ``(len(rows), n_train)`` finite floating-point attributions (float32 as methods give
            them), on the CPU; valid only during the call (the caller drops it).
        """

    @abstractmethod
    def kept(self) -> str:
        """What the reader keeps, in words, for the record (e.g. ``"top-5 indices per test point"``)."""

    @abstractmethod
    def nbytes(self) -> int:
        """Bytes of what the reader holds now (the record's ``explanations_kept``)."""


class WholeMatrix(Reader):
    """Keeps every row: the whole ``(n_test, n_train)`` matrix, as :attr:`matrix`.

    For a metric that needs all of it at once (model randomization correlates each row with the
    row of a second fit, computed after the run's explanations); it makes a run's memory grow with
    ``n_test x n_train``. The default reader of a metric that declares none.
    """

    def __init__(self, n_rows: int) -> None:
        self.n_rows = n_rows
        self._matrix: Tensor | None = None

    def update(self, rows: slice, chunk: Tensor) -> None:
        if self._matrix is None:
            self._matrix = chunk.new_empty((self.n_rows, chunk.shape[1]))
        self._matrix[rows] = chunk  # a copy: the chunk may be a buffer its method fills again

    @property
    def matrix(self) -> Tensor:
        """``(n_test, n_train)``: every row given to :meth:`update`."""
        if self._matrix is None:
            raise DataError("no explanations were read (no chunk was given to the reader)")
        return self._matrix

    def kept(self) -> str:
        return "the whole matrix (n_test x n_train)"

    def nbytes(self) -> int:
        return 0 if self._matrix is None else self._matrix.element_size() * self._matrix.nelement()


R = TypeVar("R", bound=Reader)


@dataclass
class MetricContext:
    """Everything a metric may read. Explanation rows follow ``data.test`` order.

    The explanations come in one of two ways. In a run, ``explanations`` is None and ``streamed``
    is the metric's own reader, which the runner fed with every chunk of the explanations; a caller
    that holds the whole matrix (tests, a notebook) passes it as ``explanations`` instead. A metric
    reads either the same way, through :meth:`read`.

    ``retrain`` retrains models on subsets of the training set (None where the harness offers
    none); ``explain_with`` fits a fresh instance of the run's method, with the run's config, on
    another model (same training data) and returns its ``(n_test, n_train)`` explanations of
    ``data.test.inputs`` for ``targets`` (model randomization).
    """

    data: TaskData
    model: nn.Module
    explanations: Tensor | None  # (n_test, n_train), or None in a run (see ``streamed``)
    targets: Tensor  # (n_test,) the model's predicted classes
    self_influence: Tensor | None  # (n_train,) or None when the method has none
    cache: Cache
    device: Any = None
    retrain: Counterfactuals | None = None
    explain_with: Callable[[nn.Module], Tensor] | None = None
    #: The metric's reader after the runner fed it every chunk (None outside a run).
    streamed: Reader | None = None

    def read(self, metric: Metric, kind: type[R]) -> R:
        """``metric``'s reader, of class ``kind``, after it has seen every test point's attributions.

        In a run: ``streamed``. Otherwise a fresh ``metric.reader(self)`` fed the whole of
        ``explanations`` (checked first: :meth:`check_explanations`).

        Raises
        ------
        DataError
            When there are no explanations to read, or the matrix held is malformed.
        """
        reader: Reader | None = self.streamed
        if reader is None:
            name = metric.name or type(metric).__name__
            if self.explanations is None:
                raise DataError(
                    f"{name} reads explanations and the context holds none: run it through the harness "
                    "(which streams them) or pass the (n_test, n_train) matrix as explanations"
                )
            self.check_explanations(name)
            reader = metric.reader(self)
            if reader is not None:
                reader.update(slice(0, len(self.explanations)), self.explanations.detach())
        if not isinstance(reader, kind):
            raise TypeError(f"{metric.name!r} read a {type(reader).__name__}, expected a {kind.__name__}")
        return reader

    def check_explanations(self, name: str) -> None:
        """Raise :class:`DataError` when the matrix held (if any) is not ``(n_test, n_train)`` and finite.

        A run's chunks are checked by the runner as they come; this checks a matrix a caller passed.
        """
        import torch

        if self.explanations is None:
            return
        expected = (len(self.data.test), len(self.data.train))
        if tuple(self.explanations.shape) != expected:
            raise DataError(
                f"{name} needs explanations of shape (n_test, n_train) = {expected}; got "
                f"{tuple(self.explanations.shape)}"
            )
        if not torch.isfinite(self.explanations).all():
            raise DataError(f"{name} needs finite attributions; got NaN or infinite values")


@dataclass
class MetricResult:
    """What a metric computed.

    ``value`` is the metric's number. ``per_point``, for a metric that is a mean over explained test
    points (class detection, LDS, ...), holds the scores it averages, one per point in test order
    (or per selected point, e.g. shortcut detection's points predicted as the shortcut class), so
    that the report can bootstrap an interval over test points; the harness checks that their mean
    is ``value``. None for a metric that is not such a mean (mislabel detection, top-k cardinality):
    its interval then comes from model seeds only.
    """

    value: float
    details: dict[str, Any] = field(default_factory=dict)
    per_point: list[float] | None = None


class Metric(ABC):
    """An evaluation metric with a declared direction and the variant it needs.

    What a metric writes: :meth:`reader` (what it keeps of the explanations while a run streams
    them) and :meth:`compute` (its value from what it kept, read through ``ctx.read(self, Kind)``).
    """

    Config: ClassVar[type[Config]] = Config
    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    direction: ClassVar[Literal["higher", "lower"]] = "higher"
    #: The dataset variant whose model the metric must be computed on (None: any).
    requires_variant: ClassVar[str | None] = None
    #: What the metric reads from the method: "explanations" and/or "self_influence".
    needs: ClassVar[frozenset[str]] = frozenset({"explanations"})

    def __init__(self, config: harness.config.Config | None = None) -> None:
        self.config = config if config is not None else self.Config()

    def check_applicable(self, variant: str, method_supports: frozenset[str]) -> None:
        """Raise :class:`CapabilityError` naming the fix when the run cannot support this metric."""
        if self.requires_variant is not None and variant != self.requires_variant:
            raise CapabilityError(
                f"metric {self.name!r} needs the {self.requires_variant!r} variant "
                f"(got {variant!r}); run it with --variant {self.requires_variant}"
            )
        if "self_influence" in self.needs and "self_influence" not in method_supports:
            raise CapabilityError(
                f"metric {self.name!r} needs self-influence, which this method does not support"
            )

    def reader(self, ctx: MetricContext) -> Reader | None:
        """What this metric keeps of the explanations (None: it reads none), before any is seen.

        ``ctx`` holds everything but the explanations and self-influence. Raise
        :class:`DataError` here for data the metric cannot use (it is recorded as the metric's
        failure; the run goes on). Default: the whole matrix (:class:`WholeMatrix`) for a metric
        that reads explanations, which the runner then also passes as ``ctx.explanations``.
        """
        return WholeMatrix(len(ctx.data.test)) if "explanations" in self.needs else None

    @abstractmethod
    def compute(self, ctx: MetricContext) -> MetricResult:
        """The metric's value (and optional details such as a curve) for one run."""
