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
``lambda_max_examples`` training points. :meth:`EKFAC.compute` has kronfluence write its factors into a
scratch folder that the harness cache moves into the entry (``<entry>/files``, ``key.json`` beside it),
keyed by the model weights, the training data, the kronfluence version, the generator's device type and
every option that changes the factors (damping and the scoring batch sizes act at scoring time only:
they are left out, so they share one entry). :meth:`EKFAC.load` points kronfluence at that folder, on
a miss and on a hit alike; a second ``fit`` on the same inputs reads the factors back without
refitting. ``explain`` = the test points' measurement gradients and one pass of training gradients over
the whole training set per call (kronfluence keeps no training gradients), written by kronfluence to a
private scratch directory and deleted after reading.
"""

from __future__ import annotations

import copy
import logging
import math
import shutil
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from harness.cache import Artefact
from harness.config import Config, ConfigError, option, require_positive_int
from harness.protocols import CHECKPOINTS_ATTR, DataError, Inputs, Method, Split

if TYPE_CHECKING:
    from torch import Tensor, nn

log = logging.getLogger(__name__)

#: kronfluence's factor strategies, the paper's first.
STRATEGIES = ("ekfac", "kfac", "diagonal", "identity")
FISHER = ("true", "empirical")
PRECISIONS = ("auto", "float32", "float64")
#: kronfluence 1.0.1's own default damping (ScoreArguments.damping_factor); the paper names none.
KRONFLUENCE_DEFAULT_DAMPING = 1e-8
#: kronfluence's analysis name: its factors lie in <folder>/<ANALYSIS>/factors_<strategy>/.
ANALYSIS = "kronfluence"
#: Options that act at scoring time only: they do not change the fitted factors (the cache key).
SCORING_OPTIONS = frozenset({"damping", "train_batch_size", "query_batch_size"})


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
        """The options that change the fitted factors (in the cache key); damping and scoring do not."""
        return {k: v for k, v in self.to_dict().items() if k not in SCORING_OPTIONS}


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
    """``(x_i, y_i)`` of a split's inputs in the analysis dtype, each point ``repeats`` times in a row
    (more label draws for the true Fisher).

    The inputs are read (normalised) a block of about 16 MB at a time, kept until an item outside it
    is asked for: kronfluence reads the points in order, so a pass normalises each block once, and
    the whole split is never materialised. Items equal those of a ``TensorDataset`` of the whole
    converted tensor. (The class keeps its former name: kronfluence writes it into the metadata of
    the factors in cached entries.)
    """

    BLOCK_BYTES = 16 * 2**20

    def __init__(self, inputs: Inputs, y: Tensor, dtype: torch.dtype, repeats: int = 1) -> None:
        self.inputs, self.y, self.dtype, self.repeats = inputs, y.detach().cpu().long(), dtype, repeats
        row_bytes = max(1, inputs.stored[0].numel() if len(inputs) else 1) * torch.finfo(dtype).bits // 8
        self.block = max(1, self.BLOCK_BYTES // row_bytes)
        self._start: int | None = None
        self._rows: Tensor | None = None

    def __len__(self) -> int:
        return int(self.y.shape[0]) * self.repeats

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        i = index // self.repeats
        if not 0 <= i < int(self.y.shape[0]):
            raise IndexError(f"index {index} is out of range for {len(self)} items")
        start = i - i % self.block
        if start != self._start or self._rows is None:
            rows = self.inputs[start : start + self.block]
            self._rows = rows.to(self.dtype) if rows.is_floating_point() else rows
            self._start = start
        return self._rows[i - start], self.y[i]


class EKFAC(Method):
    """EK-FAC influence functions (Grosse et al. 2023) through kronfluence, all Linear/Conv2d layers."""

    Config = EKFACConfig
    version = "1"
    supports = frozenset({"self_influence", "cache"})
    attributes_through = "all Linear and Conv2d layers"
    self_influence_definition = (
        "g_i^T (G + damping I)^{-1} g_i / N, g_i the CE gradient at the training label, G the EK-FAC Fisher"
    )
    cache_ignores = SCORING_OPTIONS

    config: EKFACConfig

    def __init__(self, config: EKFACConfig | None = None) -> None:
        super().__init__(config)
        if self.config.modules:  # the record says what this instance attributes through
            self.attributes_through = "modules " + ", ".join(self.config.modules)  # type: ignore[misc]
        if self.config.strategy != "ekfac":
            self.self_influence_definition = (  # type: ignore[misc]
                f"g_i^T (G + damping I)^{{-1}} g_i / N, G the {self.config.strategy} curvature"
            )
        #: kronfluence's prepared deep copy of the given model (tracked modules wrapped), from setup().
        self.wrapped_model_: nn.Module | None = None
        #: Names of the modules kronfluence tracks in ``wrapped_model_``.
        self.tracked_modules_: list[str] = []
        self._task: Any = None
        self._dtype: torch.dtype = torch.float32
        self._factors_dir: Path | None = None
        self._scratch: Path | None = None
        self._train: Split | None = None
        self._self_influence: Tensor | None = None
        self.info_: dict[str, Any] = {}

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

    def cache_key_extra(self, model: nn.Module, train: Split) -> dict[str, Any]:
        """kronfluence's version and the device type of the generator that draws the true-Fisher labels."""
        assert self.device_ is not None, "cache_key is called by fit(), after device_ is set"
        return {"kronfluence": _kronfluence_version(), "generator_device": self.device_.type}

    def setup(self, model: nn.Module, train: Split) -> None:
        """Check the inputs and build kronfluence's task and its prepared copy of ``model``.

        Parameters
        ----------
        model:
            The trained model on its device; it is not modified (kronfluence wraps a deep copy,
            ``wrapped_model_``, in float32 or float64 as ``precision`` says).
        train:
            ``x`` ``(n_train, *input_shape)``; ``y`` ``(n_train,)`` the labels the model was trained on.

        Raises
        ------
        DataError
            An empty training set, a model without parameters or without a module to track, or no
            module small enough for ``max_module_params``.
        ConfigError
            ``modules`` names a module the model does not have.
        """
        if len(train) == 0:
            raise DataError("EKFAC: the training set is empty")
        cfg = self.config
        first = next(model.parameters(), None)
        if first is None:
            raise DataError("EKFAC: the model has no parameters")
        self._dtype = first.dtype if cfg.precision == "auto" else getattr(torch, cfg.precision)
        if self._dtype not in (torch.float32, torch.float64):
            raise DataError(f"EKFAC: precision {self._dtype} is not supported; use float32 or float64")
        assert self.device_ is not None
        generator = torch.Generator(device=self.device_).manual_seed(cfg.seed)
        modules = cfg.modules or _small_modules(model, cfg.max_module_params)
        if cfg.max_module_params is not None and not cfg.modules:
            if not modules:
                raise DataError(
                    f"EKFAC: no Linear or Conv2d module has at most max_module_params="
                    f"{cfg.max_module_params} weights; raise it or set it to None"
                )
            self.attributes_through = "modules " + ", ".join(modules)  # type: ignore[misc]
        self._task = _kronfluence_task(generator, modules)
        self.wrapped_model_ = self._prepare(model)
        self.tracked_modules_ = _tracked_modules(self.wrapped_model_)
        if not self.tracked_modules_:
            raise DataError("EKFAC: the model has no Linear or Conv2d module for kronfluence to track")

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

    def compute(self, model: nn.Module, train: Split) -> Artefact:
        """Fit kronfluence's factors on the training set (a cache miss).

        kronfluence writes them into a scratch folder (``<folder>/kronfluence/factors_<strategy>/``),
        returned as the artefact's ``folder``: the cache moves it into the entry.

        Returns
        -------
        Artefact
            ``folder`` with kronfluence's factor files; ``meta`` with ``n_train``, the numbers of
            covariance and Lambda examples and the analysis dtype. No tensors.
        """
        cfg = self.config
        assert self.device_ is not None and self.wrapped_model_ is not None
        folder = self.scratch_dir()
        repeats = cfg.fisher_samples if cfg.fisher == "true" else 1
        dataset = _RepeatedDataset(train.inputs, train.y, self._dtype, repeats)
        batch = min(cfg.factor_batch_size, len(dataset))
        log.info(
            "ekfac: fitting %s factors on %d training points (%d label draws each), %d modules",
            cfg.strategy,
            len(train),
            repeats,
            len(self.tracked_modules_),
        )
        analyzer = _analyzer(self.wrapped_model_, self._task, folder, cpu=self.device_.type == "cpu")
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
        return Artefact(folder=folder, meta=meta)

    def load(self, artefact: Artefact, model: nn.Module, train: Split) -> None:
        """Point kronfluence at the factors in ``artefact.folder`` (the cache entry's ``files``)."""
        if artefact.folder is None:
            raise DataError(
                "EKFAC: the cache entry holds no kronfluence factor folder; delete the entry and fit again"
            )
        self._factors_dir = Path(artefact.folder) / ANALYSIS / f"factors_{self.config.strategy}"
        if not self._factors_dir.is_dir():
            raise DataError(
                f"EKFAC: no kronfluence factors at {self._factors_dir}; delete the cache entry and fit again"
            )
        if self.from_cache_:
            log.info("ekfac: factors read from the cache at %s", artefact.folder)
        self.info_ = dict(artefact.meta)
        self._scratch = self.scratch_dir()  # kronfluence's score files, deleted after reading
        self._train = train
        self._self_influence = None

    # ----- scores ---------------------------------------------------------------------------
    def _scoring_analyzer(self) -> Any:
        assert self._scratch is not None and self.device_ is not None
        return _analyzer(
            self.wrapped_model_,
            self._task,
            self._scratch,
            cpu=self.device_.type == "cpu",
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
        assert self._train is not None and self.device_ is not None
        targets = targets.reshape(-1).long()
        if targets.shape[0] != x.shape[0]:
            raise DataError(f"EKFAC: {x.shape[0]} test points but {targets.shape[0]} targets")
        n_train = len(self._train)
        if x.shape[0] == 0:
            return torch.zeros(0, n_train, dtype=torch.float32, device=self.device_)
        cfg = self.config
        name = f"pairwise_{uuid.uuid4().hex}"
        analyzer = self._scoring_analyzer()
        try:
            analyzer.compute_pairwise_scores(
                scores_name=name,
                factors_name=cfg.strategy,
                query_dataset=torch.utils.data.TensorDataset(*_cpu_tensors(x, targets, self._dtype)),
                train_dataset=_RepeatedDataset(self._train.inputs, self._train.y, self._dtype),
                per_device_query_batch_size=min(cfg.query_batch_size, x.shape[0]),
                per_device_train_batch_size=min(cfg.train_batch_size, n_train),
                score_args=self._score_args(),
                overwrite_output_dir=True,
            )
            scores = analyzer.load_pairwise_scores(name)["all_modules"]  # (n_test, n_train)
        finally:
            shutil.rmtree(analyzer.scores_output_dir(name), ignore_errors=True)
        return (scores.double() / n_train).to(device=self.device_, dtype=torch.float32)

    def self_influence(self) -> Tensor:
        """``(n_train,)`` float32: ``g_i^T (G + damping I)^{-1} g_i / N`` (kronfluence self-scores / N)."""
        self._require_fitted()
        assert self._train is not None and self.device_ is not None
        if self._self_influence is None:
            n_train = len(self._train)
            name = f"self_{uuid.uuid4().hex}"
            analyzer = self._scoring_analyzer()
            try:
                analyzer.compute_self_scores(
                    scores_name=name,
                    factors_name=self.config.strategy,
                    train_dataset=_RepeatedDataset(self._train.inputs, self._train.y, self._dtype),
                    per_device_train_batch_size=min(self.config.train_batch_size, n_train),
                    score_args=self._score_args(),
                    overwrite_output_dir=True,
                )
                scores = analyzer.load_self_scores(name)["all_modules"]  # (n_train,)
            finally:
                shutil.rmtree(analyzer.scores_output_dir(name), ignore_errors=True)
            self._self_influence = (scores.double() / n_train).to(device=self.device_, dtype=torch.float32)
        return self._self_influence

    def diagnostics(self) -> dict[str, Any]:
        """Strategy, damping, the factor meta, whether the factors came from the cache, tracked modules."""
        out: dict[str, Any] = {"strategy": self.config.strategy, "damping": self.config.damping, **self.info_}
        if self._fitted:
            out["factors_from_cache"] = self.from_cache_
            out["tracked_modules"] = list(self.tracked_modules_)
        return out


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


def _kronfluence_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kronfluence")
    except PackageNotFoundError:  # pragma: no cover - kronfluence is a dependency of this method
        return "unknown"
