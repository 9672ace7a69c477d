"""EK-FAC influence functions through kronfluence (Grosse et al. 2023).

Paper: Grosse, Bae, Anil, Elhage, Tamkin, Tajdini, Steiner, Li, Durmus, Perez, Hubinger, Lukošiūtė,
Nguyen, Joseph, McCandlish, Kaplan, Bowman, "Studying Large Language Model Generalization with
Influence Functions" (arXiv 2308.03296, 2023); EK-FAC itself: George, Laurent, Bouthillier, Ballas,
Vincent, "Fast Approximate Natural Gradient Descent in a Kronecker-factored Eigenbasis" (NeurIPS
2018). Implementation: kronfluence 1.0.1 (Bae et al.). Settings from the DualXDA paper
(../shared/reference/dualxda-paper.md): strategy ``ekfac``, 100k examples for the covariance and the
Lambda (eigenvalue-correction) factors (so all of MNIST's 60k), all Linear/Conv2d modules.

Notation, paper -> code:

- ``theta``: the parameters of the tracked modules (by default every ``nn.Linear`` and ``nn.Conv2d``,
  weight and bias), config ``modules``;
- ``g(x, c) = grad_theta CE(f(x), c)``: for test points the gradient of kronfluence's *measurement*
  (:meth:`_ClassificationTask.compute_measurement`: cross-entropy at the target class, the model's
  PREDICTED class), for training points of the *training loss* at the TRAINING label ``y_i``;
- ``G``: the curvature. kronfluence fits the (true) Fisher of the mean training cross-entropy, labels
  drawn from the model's own predictive distribution (config ``fisher="true"``; ``"empirical"`` uses
  the training labels). For softmax cross-entropy the true Fisher equals the Gauss–Newton matrix,
  and for a single linear layer that is the Hessian. Per module ``G ~ A (x) S`` (KFAC: activation and
  pre-activation-gradient covariances), EK-FAC keeps KFAC's eigenbasis ``Q_A (x) Q_S`` and refits the
  eigenvalues ``Lambda`` on per-sample gradients; block-diagonal over modules;
- ``lambda``: damping added to the eigenvalues -> config ``damping`` (kronfluence's
  ``damping_factor``);
- attribution of training point i for test input x and target c:
  ``a_i(x) = g(x, c)^T (G + lambda I)^{-1} g(x_i, y_i) / N``. kronfluence's pairwise score is the
  same quantity without ``1 / N``; it is already positive for proponents (training points whose
  up-weighting lowers the test loss: checked against the closed form of tests/convex_reference.py),
  the project's sign convention, so no sign flip, only the ``1 / N`` of up-weighting by ``1 / N``;
- self-influence: ``g(x_i, y_i)^T (G + lambda I)^{-1} g(x_i, y_i) / N`` (kronfluence's self-scores
  with the training loss, divided by N).

Strategies (config ``strategy``): ``ekfac`` (default, paper), ``kfac`` (no eigenvalue correction),
``diagonal`` (diagonal Fisher), ``identity`` (no curvature: ``a_i = g(x, c)^T g(x_i, y_i) / (N (1 +
lambda))``, plain gradient dot products up to that constant).

Cost and cache. ``fit`` = kronfluence's factor fitting (covariances, eigendecompositions, Lambda): one
pass of per-example gradients over up to ``covariance_max_examples`` and one over up to
``lambda_max_examples`` training points. kronfluence's output directory lives inside the harness
cache at ``cache.path_for(key)``, the key being the content hashes of the model weights and of the
training data plus every option that changes the factors; an entry is built in a temporary sibling
directory and renamed into place (complete or absent), ``key.json`` beside kronfluence's files. A
second ``fit`` on the same inputs reads the factors back without refitting. ``explain`` = the test
points' measurement gradients and one pass of training gradients over the whole training set per call
(kronfluence keeps no training gradients), written by kronfluence to a private scratch directory and
deleted after reading.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import uuid
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from harness.config import Config, ConfigError, option, require_positive_int
from harness.measures import model_fingerprint
from harness.protocols import CHECKPOINTS_ATTR, DataError, Method, Split

if TYPE_CHECKING:
    from torch import Tensor, nn

    from harness.cache import Cache

log = logging.getLogger(__name__)

#: kronfluence's factor strategies, the paper's first.
STRATEGIES = ("ekfac", "kfac", "diagonal", "identity")
FISHER = ("true", "empirical")
PRECISIONS = ("auto", "float32", "float64")
#: kronfluence 1.0.1's own default damping (ScoreArguments.damping_factor); the paper names none.
KRONFLUENCE_DEFAULT_DAMPING = 1e-8
#: The analysis and factor names inside a cache entry: <entry>/<ANALYSIS>/factors_<strategy>/.
ANALYSIS = "kronfluence"


@dataclass(frozen=True, kw_only=True)
class EKFACConfig(Config):
    """Configuration of :class:`EKFAC`; the defaults are the DualXDA paper's settings."""

    strategy: str = option(
        "ekfac", f"kronfluence factor strategy: one of {', '.join(STRATEGIES)} (paper: ekfac)"
    )
    covariance_max_examples: int | None = option(
        100_000, "training points (the first ones) for the covariance factors (paper: 100k; None: all)"
    )
    lambda_max_examples: int | None = option(
        100_000,
        "training points (the first ones) for the eigenvalue correction Lambda (paper: 100k; None: all)",
    )
    damping: float | None = option(
        KRONFLUENCE_DEFAULT_DAMPING,
        "damping added to the curvature's eigenvalues (kronfluence damping_factor; default = kronfluence "
        "1.0.1's 1e-8, the paper names none); None = kronfluence's heuristic 0.1 x mean eigenvalue",
    )
    fisher: Literal["true", "empirical"] = option(
        "true", "curvature: true Fisher (labels sampled from the model, kronfluence default) or empirical"
    )
    fisher_samples: int = option(
        1, "label draws per training point for the true Fisher (kronfluence: 1); >1 repeats each point"
    )
    modules: tuple[str, ...] = option(
        (), "names of the tracked modules (model.named_modules()); empty: all Linear and Conv2d (paper)"
    )
    max_module_params: int | None = option(
        None,
        "track only the Linear/Conv2d modules whose weight has at most this many entries "
        "(None: all, the paper); ignored when `modules` names them",
    )
    factor_batch_size: int = option(64, "training points per batch when fitting factors")
    train_batch_size: int = option(256, "training points per batch when scoring")
    query_batch_size: int = option(
        20,
        "test points per explain() call and per kronfluence query batch (paper: 20); every query batch "
        "is one pass over the training gradients, so the batch is part of the measured cost",
    )
    precision: Literal["auto", "float32", "float64"] = option(
        "auto", "dtype of every kronfluence computation; auto: the model's parameter dtype"
    )
    seed: int = option(0, "seeds the label draws of the true Fisher (a private generator)")

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"unknown strategy {self.strategy!r}; choose one of {list(STRATEGIES)}")
        if self.fisher not in FISHER:
            raise ConfigError(f"fisher must be one of {list(FISHER)}, got {self.fisher!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {list(PRECISIONS)}, got {self.precision!r}")
        require_positive_int(self.covariance_max_examples, "covariance_max_examples", allow_none=True)
        require_positive_int(self.lambda_max_examples, "lambda_max_examples", allow_none=True)
        require_positive_int(self.max_module_params, "max_module_params", allow_none=True)
        for name in ("fisher_samples", "factor_batch_size", "train_batch_size", "query_batch_size"):
            require_positive_int(getattr(self, name), name)
        if self.damping is not None and (
            isinstance(self.damping, bool)
            or not isinstance(self.damping, int | float)
            or not math.isfinite(self.damping)
            or self.damping < 0
        ):
            raise ConfigError(
                f"damping must be a finite number >= 0 or None (heuristic), got {self.damping!r}"
            )
        if not isinstance(self.modules, tuple) or not all(isinstance(m, str) and m for m in self.modules):
            raise ConfigError(f"modules must be a tuple of module names, got {self.modules!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")

    @classmethod
    def paper(cls) -> EKFACConfig:
        """The paper's settings: ekfac, 100k examples for covariance and Lambda, all Linear/Conv2d."""
        return cls()

    @classmethod
    def quick(cls) -> EKFACConfig:
        """Factors on the first 5,000 training points; modules with at most 100,000 weights.

        On a 2-core CPU EK-FAC's cost is the rotation of every per-sample gradient into each
        module's Kronecker eigenbasis, ``d_in^2 d_out + d_in d_out^2`` multiply-adds per sample: about
        3.5e9 for BasicConv's 2420 -> 500 layer (1.2 M of its 1.26 M weights), for every training
        point in the Lambda fit, in self-influence and in every explain call. quick() leaves that
        layer out (the three convolutions, the 500 -> 100 layer and the classifier stay tracked), so
        EK-FAC fits the CPU suite; the record's ``attributes_through`` lists the tracked modules.
        Every training point is still scored; the curvature estimate is noisier.
        """
        return cls(covariance_max_examples=5_000, lambda_max_examples=5_000, max_module_params=100_000)

    def factor_options(self) -> dict[str, Any]:
        """The options that change the fitted factors (the cache key); damping and scoring do not."""
        skip = {"damping", "train_batch_size", "query_batch_size"}
        return {k: v for k, v in self.to_dict().items() if k not in skip}


def _kronfluence_task(generator: torch.Generator | None, modules: tuple[str, ...]) -> Any:
    """A kronfluence ``Task`` for classification with cross-entropy (built lazily: heavy import)."""
    from kronfluence.task import Task as KronfluenceTask

    class _ClassificationTask(KronfluenceTask):
        """Training loss: summed CE at the batch labels; measurement: summed CE at the targets.

        kronfluence takes per-sample gradients of these sums (so the sums, not means). With
        ``sample=True`` (true Fisher) the labels are drawn from the model's softmax with a private
        generator, so fitting is reproducible without touching the global RNG.
        """

        def compute_train_loss(self, batch: Any, model: nn.Module, sample: bool = False) -> Tensor:
            x, y = batch
            logits = model(x)
            if sample:
                with torch.no_grad():
                    probs = torch.softmax(logits.detach(), dim=-1)
                    y = torch.multinomial(probs, 1, generator=generator).flatten()
            return torch.nn.functional.cross_entropy(logits, y, reduction="sum")

        def compute_measurement(self, batch: Any, model: nn.Module) -> Tensor:
            x, targets = batch
            return torch.nn.functional.cross_entropy(model(x), targets, reduction="sum")

        def get_influence_tracked_modules(self) -> list[str] | None:
            return list(modules) if modules else None

    return _ClassificationTask()


def _analyzer(
    model: nn.Module, task: Any, output_dir: Path, *, cpu: bool, factors_dir: Path | None = None
) -> Any:
    """A kronfluence ``Analyzer`` writing under ``output_dir``; factors read from ``factors_dir``."""
    from kronfluence.analyzer import Analyzer

    class _Analyzer(Analyzer):
        def factors_output_dir(self, factors_name: str) -> Path:
            if factors_dir is not None:
                return factors_dir
            return super().factors_output_dir(factors_name)

    level = logging.WARNING if log.getEffectiveLevel() > logging.DEBUG else logging.INFO
    return _Analyzer(
        analysis_name=ANALYSIS,
        model=model,
        task=task,
        cpu=cpu,
        output_dir=str(output_dir),
        disable_tqdm=not sys.stderr.isatty(),
        log_level=level,
    )


class _RepeatedDataset(torch.utils.data.Dataset):
    """Each point of ``(x, y)`` ``repeats`` times in a row (more label draws for the true Fisher)."""

    def __init__(self, x: Tensor, y: Tensor, repeats: int) -> None:
        self.x, self.y, self.repeats = x, y, repeats

    def __len__(self) -> int:
        return int(self.y.shape[0]) * self.repeats

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        i = index // self.repeats
        return self.x[i], self.y[i]


class EKFAC(Method):
    """EK-FAC influence functions (Grosse et al. 2023) through kronfluence, all Linear/Conv2d layers."""

    Config = EKFACConfig
    version = "1"
    supports = frozenset({"self_influence", "cache"})
    attributes_through = "all Linear and Conv2d layers"
    self_influence_definition = (
        "g_i^T (G + damping I)^{-1} g_i / N, g_i the CE gradient at the training label, G the EK-FAC Fisher"
    )

    config: EKFACConfig

    def __init__(self, config: EKFACConfig | None = None) -> None:
        super().__init__(config)
        if self.config.modules:  # the record says what this instance attributes through
            self.attributes_through = "modules " + ", ".join(self.config.modules)  # type: ignore[misc]
        if self.config.strategy != "ekfac":
            self.self_influence_definition = (  # type: ignore[misc]
                f"g_i^T (G + damping I)^{{-1}} g_i / N, G the {self.config.strategy} curvature"
            )
        self._model: nn.Module | None = None  # the kronfluence-prepared copy
        self._task: Any = None
        self._device: torch.device | None = None
        self._dtype: torch.dtype = torch.float32
        self._factors_dir: Path | None = None
        self._scratch: Path | None = None
        self._train: Split | None = None
        self._self_influence: Tensor | None = None
        self.info_: dict[str, Any] = {}

    # ----- cache -----------------------------------------------------------------------------
    def _cache_key(self, model: nn.Module, train: Split) -> dict[str, Any]:
        return {
            "method": "EKFAC",
            "version": self.version,
            "kronfluence": _kronfluence_version(),
            "model": model_fingerprint(model),
            "train": train.fingerprint(),
            **self.config.factor_options(),
        }

    def _factor_args(self) -> Any:
        from kronfluence.arguments import FactorArguments

        cfg, dtype = self.config, self._dtype
        repeats = cfg.fisher_samples if cfg.fisher == "true" else 1
        return FactorArguments(
            strategy=cfg.strategy,
            use_empirical_fisher=cfg.fisher == "empirical",
            covariance_max_examples=None
            if cfg.covariance_max_examples is None
            else cfg.covariance_max_examples * repeats,
            lambda_max_examples=None
            if cfg.lambda_max_examples is None
            else cfg.lambda_max_examples * repeats,
            activation_covariance_dtype=dtype,
            gradient_covariance_dtype=dtype,
            per_sample_gradient_dtype=dtype,
            lambda_dtype=dtype,
        )

    def _score_args(self) -> Any:
        from kronfluence.arguments import ScoreArguments

        dtype = self._dtype
        return ScoreArguments(
            damping_factor=self.config.damping,
            per_sample_gradient_dtype=dtype,
            precondition_dtype=dtype,
            score_dtype=dtype,
            query_gradient_svd_dtype=torch.float64 if dtype == torch.float64 else torch.float32,
        )

    # ----- lifecycle --------------------------------------------------------------------------
    def warm_up(self, device: torch.device) -> None:
        """Import kronfluence (seconds on the first import in a process: not the method's cost)."""
        import kronfluence.analyzer  # noqa: F401
        import kronfluence.arguments  # noqa: F401
        import kronfluence.task  # noqa: F401

    def fit(self, model: nn.Module, train: Split, *, cache: Cache) -> None:
        """Fit kronfluence's factors on the training set, or read them back from the cache.

        Parameters
        ----------
        model:
            The trained model on its device; it is not modified (kronfluence wraps a copy).
        train:
            ``x`` ``(n_train, *input_shape)``; ``y`` ``(n_train,)`` the labels the model was trained on.
        cache:
            Holds kronfluence's factor directory under ``cache.path_for(key)``.
        """
        if len(train) == 0:
            raise DataError("EKFAC: the training set is empty")
        cfg = self.config
        first = next(model.parameters(), None)
        if first is None:
            raise DataError("EKFAC: the model has no parameters")
        self._device = first.device
        self._dtype = first.dtype if cfg.precision == "auto" else getattr(torch, cfg.precision)
        if self._dtype not in (torch.float32, torch.float64):
            raise DataError(f"EKFAC: precision {self._dtype} is not supported; use float32 or float64")

        key = self._cache_key(model, train)
        generator = torch.Generator(device=self._device).manual_seed(cfg.seed)
        modules = cfg.modules or _small_modules(model, cfg.max_module_params)
        if cfg.max_module_params is not None and not cfg.modules:
            if not modules:
                raise DataError(
                    f"EKFAC: no Linear or Conv2d module has at most max_module_params="
                    f"{cfg.max_module_params} weights; raise it or set it to None"
                )
            self.attributes_through = "modules " + ", ".join(modules)  # type: ignore[misc]
        self._task = _kronfluence_task(generator, modules)
        self._model = self._prepare(model)
        self.tracked_modules_ = _tracked_modules(self._model)
        if not self.tracked_modules_:
            raise DataError("EKFAC: the model has no Linear or Conv2d module for kronfluence to track")

        entry = cache.path_for(key)
        if (entry / "key.json").exists():
            _check_key(entry, key)
            cache.stats.hits += 1
            from_cache = True
            log.info("ekfac: factors read from the cache at %s", entry)
        else:
            cache.stats.misses += 1
            from_cache = False
            self._fit_factors(train, entry, key)
        self._factors_dir = entry / ANALYSIS / f"factors_{cfg.strategy}"
        meta = json.loads((entry / "meta.json").read_text())
        self.info_ = {**meta, "factors_from_cache": from_cache, "tracked_modules": self.tracked_modules_}

        scratch = Path(tempfile.mkdtemp(prefix="ekfac-scores-"))
        weakref.finalize(self, shutil.rmtree, scratch, True)
        self._scratch = scratch
        self._train = train
        self._self_influence = None
        self._fitted = True

    def _prepare(self, model: nn.Module) -> nn.Module:
        """A kronfluence-prepared deep copy of ``model`` (eval mode, frozen, tracked modules wrapped)."""
        from kronfluence.analyzer import prepare_model

        checkpoints = getattr(model, CHECKPOINTS_ATTR, None)
        memo = {id(checkpoints): checkpoints} if checkpoints is not None else {}  # shared, not copied
        clone = copy.deepcopy(model, memo)
        if self._dtype != next(clone.parameters()).dtype:
            clone = clone.to(self._dtype)
        try:
            return prepare_model(clone, self._task)
        except (ValueError, KeyError) as err:  # kronfluence names the missing modules
            raise ConfigError(f"EKFAC: cannot track modules {list(self.config.modules)}: {err}") from err

    def _fit_factors(self, train: Split, entry: Path, key: dict[str, Any]) -> None:
        """Fit the factors into a temporary sibling of ``entry``, then rename it into place."""
        cfg = self.config
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
        try:
            repeats = cfg.fisher_samples if cfg.fisher == "true" else 1
            dataset = _RepeatedDataset(*_cpu_tensors(train.x, train.y, self._dtype), repeats)
            batch = min(cfg.factor_batch_size, len(dataset))
            log.info(
                "ekfac: fitting %s factors on %d training points (%d label draws each), %d modules",
                cfg.strategy,
                len(train),
                repeats,
                len(self.tracked_modules_),
            )
            analyzer = _analyzer(self._model, self._task, tmp, cpu=self._device.type == "cpu")
            analyzer.fit_all_factors(
                factors_name=cfg.strategy,
                dataset=dataset,
                per_device_batch_size=batch,
                factor_args=self._factor_args(),
                overwrite_output_dir=True,
            )
            n_cov = len(train) if cfg.covariance_max_examples is None else cfg.covariance_max_examples
            n_lambda = len(train) if cfg.lambda_max_examples is None else cfg.lambda_max_examples
            meta = {
                "n_train": len(train),
                "covariance_examples": min(n_cov, len(train)),
                "lambda_examples": min(n_lambda, len(train)),
                "dtype": str(self._dtype),
            }
            (tmp / "meta.json").write_text(json.dumps(meta, sort_keys=True))
            # key.json last: its presence marks a complete entry.
            (tmp / "key.json").write_text(json.dumps(key, sort_keys=True, default=str, indent=1))
            try:
                os.rename(tmp, entry)
            except OSError:
                if not (entry / "key.json").exists():
                    raise
                _check_key(entry, key)  # another writer finished first: keep theirs
                log.debug("ekfac: cache entry %s was written concurrently; keeping the first", entry)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    # ----- scores ---------------------------------------------------------------------------
    def _scoring_analyzer(self) -> Any:
        assert self._scratch is not None and self._device is not None
        return _analyzer(
            self._model,
            self._task,
            self._scratch,
            cpu=self._device.type == "cpu",
            factors_dir=self._factors_dir,
        )

    def preferred_batch_size(self) -> int:
        """The paper's explain batch (20): one pass over the training gradients per call."""
        return self.config.query_batch_size

    def explain(self, x: Tensor, targets: Tensor) -> Tensor:
        """EK-FAC attributions of every training point for each test input.

        Parameters
        ----------
        x:
            ``(n_test, *input_shape)`` test inputs.
        targets:
            ``(n_test,)`` target classes (the model's predicted classes in this benchmark).

        Returns
        -------
        Tensor
            ``(n_test, n_train)`` float32 on the model's device:
            ``g(x, c)^T (G + damping I)^{-1} g(x_i, y_i) / N``, positive for proponents.
        """
        self._require_fitted()
        assert self._train is not None and self._device is not None
        targets = targets.reshape(-1).long()
        if targets.shape[0] != x.shape[0]:
            raise DataError(f"EKFAC: {x.shape[0]} test points but {targets.shape[0]} targets")
        n_train = len(self._train)
        if x.shape[0] == 0:
            return torch.zeros(0, n_train, dtype=torch.float32, device=self._device)
        cfg = self.config
        name = f"pairwise_{uuid.uuid4().hex}"
        analyzer = self._scoring_analyzer()
        try:
            analyzer.compute_pairwise_scores(
                scores_name=name,
                factors_name=cfg.strategy,
                query_dataset=torch.utils.data.TensorDataset(*_cpu_tensors(x, targets, self._dtype)),
                train_dataset=torch.utils.data.TensorDataset(
                    *_cpu_tensors(self._train.x, self._train.y, self._dtype)
                ),
                per_device_query_batch_size=min(cfg.query_batch_size, x.shape[0]),
                per_device_train_batch_size=min(cfg.train_batch_size, n_train),
                score_args=self._score_args(),
                overwrite_output_dir=True,
            )
            scores = analyzer.load_pairwise_scores(name)["all_modules"]  # (n_test, n_train)
        finally:
            shutil.rmtree(analyzer.scores_output_dir(name), ignore_errors=True)
        return (scores.double() / n_train).to(device=self._device, dtype=torch.float32)

    def self_influence(self) -> Tensor:
        """``(n_train,)`` float32: ``g_i^T (G + damping I)^{-1} g_i / N`` (kronfluence self-scores / N)."""
        self._require_fitted()
        assert self._train is not None and self._device is not None
        if self._self_influence is None:
            n_train = len(self._train)
            name = f"self_{uuid.uuid4().hex}"
            analyzer = self._scoring_analyzer()
            try:
                analyzer.compute_self_scores(
                    scores_name=name,
                    factors_name=self.config.strategy,
                    train_dataset=torch.utils.data.TensorDataset(
                        *_cpu_tensors(self._train.x, self._train.y, self._dtype)
                    ),
                    per_device_train_batch_size=min(self.config.train_batch_size, n_train),
                    score_args=self._score_args(),
                    overwrite_output_dir=True,
                )
                scores = analyzer.load_self_scores(name)["all_modules"]  # (n_train,)
            finally:
                shutil.rmtree(analyzer.scores_output_dir(name), ignore_errors=True)
            self._self_influence = (scores.double() / n_train).to(device=self._device, dtype=torch.float32)
        return self._self_influence

    def diagnostics(self) -> dict[str, Any]:
        return {"strategy": self.config.strategy, "damping": self.config.damping, **self.info_}


def _cpu_tensors(x: Tensor, y: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Inputs in the analysis dtype and labels as long, on the CPU (kronfluence moves batches)."""
    x = x.detach().cpu()
    if x.is_floating_point():
        x = x.to(dtype)
    return x, y.detach().cpu().long()


def _small_modules(model: nn.Module, limit: int | None) -> tuple[str, ...]:
    """Names of the Linear/Conv2d modules with at most ``limit`` weight entries (``()``: no limit)."""
    if limit is None:
        return ()
    return tuple(
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear | torch.nn.Conv2d) and module.weight.numel() <= limit
    )


def _tracked_modules(model: nn.Module) -> list[str]:
    """Names of the modules kronfluence wrapped in ``model``."""
    from kronfluence.module.tracked_module import TrackedModule

    return [name for name, module in model.named_modules() if isinstance(module, TrackedModule)]


def _check_key(entry: Path, key: dict[str, Any]) -> None:
    from harness.cache import CacheConflictError

    stored = json.loads((entry / "key.json").read_text())
    wanted = json.loads(json.dumps(key, sort_keys=True, default=str))
    if stored != wanted:
        raise CacheConflictError(
            f"cache entry {entry} was written for a different key; delete that directory "
            f"(stored {stored}, requested {wanted})"
        )


def _kronfluence_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kronfluence")
    except PackageNotFoundError:  # pragma: no cover - kronfluence is a dependency of this method
        return "unknown"
