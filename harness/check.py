"""``dabench check NAME``: the method contract, run on any registered method (an outside one too).

Every method the suites rank must pass these checks; the in-repo contract test
(tests/test_check.py) runs the same code over the whole registry, so a new method that passes
``dabench check`` is a method the suites can run. On the toy task (48 training points, a 2-layer MLP,
trained in a second) with the method's ``smoke()`` preset:

==========================  ===========================================================================
check                       passes when
==========================  ===========================================================================
presets                     ``default``, ``paper()``, ``quick()``, ``smoke()``, every ``sweep()`` point
                            and every task's ``for_dataset()`` settings construct a config
explain before fit          :meth:`explain` on an unfitted instance raises ``NotFittedError``
fit                         :meth:`fit` on the toy task returns
shape and dtype             ``explain`` gives ``(n_test, n_train)`` float32 on the model's device
finite                      no NaN or infinity in the explanations
deterministic               two fits under the same seed, each on a fresh cache, give equal scores
cache hit                   a second fit on the same cache reads it (methods declaring ``"cache"``)
                            and gives scores equal to the cold fit's
self-influence              ``(n_train,)`` finite, where ``"self_influence"`` is declared; otherwise it
                            raises ``CapabilityError``
feature decomposition       where declared: rows of :meth:`feature_relevance` sum to the explanations
==========================  ===========================================================================

A failed check carries the fix. :func:`check_method` returns the results, :func:`format_table`
prints them; the command exits 1 when one fails.
"""

from __future__ import annotations

import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.config import ConfigError

if TYPE_CHECKING:
    from torch import Tensor

    from harness.protocols import Method


@dataclass
class CheckResult:
    """One check: its name, whether it passed, what was seen and (when it failed) the fix."""

    name: str
    ok: bool | None  # None: not applicable (the method does not declare the capability)
    detail: str
    fix: str = ""

    @property
    def status(self) -> str:
        return {True: "pass", False: "FAIL", None: "n/a"}[self.ok]


def check_method(
    name: str, overrides: dict[str, Any] | None = None, *, preset: str = "smoke", workdir: Path | None = None
) -> list[CheckResult]:
    """Run the method contract on method ``name`` (its ``preset`` plus ``overrides``) on the toy task.

    Parameters
    ----------
    name:
        A registered method (``dabench list methods``; plug-ins included once loaded).
    overrides:
        Config values on top of the preset (``dabench check NAME --option K=V``).
    preset:
        ``smoke`` (default: the method's settings for a toy task), ``quick``, ``paper`` or ``default``.
    workdir:
        Where the check's caches go (default: a temporary folder, removed afterwards).

    Returns
    -------
    list[CheckResult]
        In the order of the module docstring's table; checks after a failed fit are not run.
    """
    from harness.registry import METHODS

    cls = METHODS.get(name)
    results = [_check_presets(cls)]
    try:
        config = cls.Config.from_dict(dict(overrides or {}), base=cls.Config.preset(preset))
    except (ConfigError, TypeError, ValueError) as err:
        return [
            *results,
            CheckResult("config", False, str(err), f"fix the {preset}() preset or the --option values"),
        ]
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="dabench-check-") as tmp:
            return results + _check_lifecycle(cls, config, Path(tmp))
    return results + _check_lifecycle(cls, config, Path(workdir))


def _check_presets(cls: type[Method]) -> CheckResult:
    from harness.registry import TASKS

    config_cls = cls.Config
    built = []
    try:
        for preset in ("default", "paper", "quick", "smoke"):
            config_cls.preset(preset)
            built.append(preset)
        for point in config_cls.sweep():
            config_cls.from_dict(dict(point), base=config_cls.quick())
        built.append(f"{len(config_cls.sweep())} sweep point(s)")
        for task in TASKS.names():
            config_cls.from_dict(dict(config_cls.for_dataset(task)), base=config_cls.paper())
        built.append("for_dataset of every task")
    except Exception as err:  # noqa: BLE001 - any error is the finding
        return CheckResult(
            "presets",
            False,
            f"after {', '.join(built) or 'nothing'}: {type(err).__name__}: {err}",
            "every preset classmethod (paper, quick, smoke), sweep() point and for_dataset() result must be "
            "valid values of the method's Config",
        )
    return CheckResult("presets", True, ", ".join(built))


def _check_lifecycle(cls: type[Method], config: Any, workdir: Path) -> list[CheckResult]:
    import torch

    from harness.cache import Cache
    from harness.model_store import get_or_train_model, load_task_data, seed_everything, select_device
    from harness.protocols import CapabilityError, NotFittedError
    from harness.registry import TASKS

    task_cls = TASKS.get("toy")
    task = task_cls(task_cls.Config())
    data = load_task_data(task)
    device = select_device()
    model, _ = get_or_train_model(task, data, seed=0, cache=Cache(workdir / "models"), device=device)
    x = data.test.materialise().to(device)  # the toy task's 24 test points
    with torch.no_grad():
        targets = model(x).argmax(dim=1)
    n_test, n_train = len(x), len(data.train)
    results: list[CheckResult] = []

    # explain before fit
    try:
        cls(config).explain(x, targets)
        results.append(
            CheckResult(
                "explain before fit",
                False,
                "explain() returned without fit()",
                "call self._require_fitted() first in explain() (the base class' fit sets the flag)",
            )
        )
    except NotFittedError:
        results.append(CheckResult("explain before fit", True, "NotFittedError"))
    except Exception as err:  # noqa: BLE001
        results.append(
            CheckResult(
                "explain before fit",
                False,
                f"{type(err).__name__}: {err}",
                "raise NotFittedError: call self._require_fitted() first in explain()",
            )
        )

    def fitted(cache: Cache) -> Method:
        seed_everything(0)
        method = cls(config)
        method.fit(model, data.train, cache=cache)
        return method

    cold_cache = Cache(workdir / "cold")
    try:
        first = fitted(cold_cache)
        scores = first.explain(x, targets)
    except Exception as err:  # noqa: BLE001
        results.append(
            CheckResult(
                "fit",
                False,
                _error(err),
                "fit() and explain() must run on the toy task (48 training points, 24 test points, an MLP "
                "with features/classifier); if the method's quick() settings cannot, give its Config a "
                "smoke() preset that can",
            )
        )
        return results
    results.append(CheckResult("fit", True, f"{n_train} training points, {n_test} test points"))
    results.append(_shape(scores, n_test, n_train, device))
    finite = bool(torch.isfinite(scores).all()) if isinstance(scores, torch.Tensor) else False
    results.append(
        CheckResult("finite", True, "all values finite")
        if finite
        else CheckResult(
            "finite",
            False,
            "NaN or infinite values in the explanations",
            "guard divisions and logs (e.g. a zero norm); the runner fails such a run",
        )
    )
    results.append(
        _compare("deterministic", scores, lambda: fitted(Cache(workdir / "fresh")).explain(x, targets))
    )

    # cache hit
    if "cache" in cls.supports:
        warm_cache = Cache(workdir / "cold")
        try:
            warm = fitted(warm_cache)
            hit = warm_cache.stats.hits > 0 and warm_cache.stats.misses == 0
            again = warm.explain(x, targets)
        except Exception as err:  # noqa: BLE001
            results.append(
                CheckResult("cache hit", False, _error(err), "load() must accept what compute() stored")
            )
        else:
            if not hit:
                results.append(
                    CheckResult(
                        "cache hit",
                        False,
                        f"second fit: {warm_cache.stats.hits} hits, {warm_cache.stats.misses} misses",
                        "the cache key must be a pure function of config, model and data: put run-dependent "
                        "values (paths, times) in meta, not in cache_key_extra()",
                    )
                )
            else:
                results.append(_compare("cache hit", scores, lambda: again, "read from the cache, "))
    else:
        results.append(CheckResult("cache hit", None, "no 'cache' in supports: every fit computes"))

    # self-influence
    if "self_influence" in cls.supports:
        try:
            si = first.self_influence()
            ok = (
                isinstance(si, torch.Tensor)
                and tuple(si.shape) == (n_train,)
                and si.is_floating_point()
                and bool(torch.isfinite(si).all())
            )
            seen = f"shape {tuple(si.shape)}, dtype {si.dtype}" if isinstance(si, torch.Tensor) else type(si)
            results.append(
                CheckResult(
                    "self-influence",
                    ok,
                    str(seen),
                    "" if ok else "self_influence() returns (n_train,) finite floats, one per training point",
                )
            )
        except Exception as err:  # noqa: BLE001
            results.append(
                CheckResult(
                    "self-influence",
                    False,
                    _error(err),
                    "implement self_influence() or drop it from supports",
                )
            )
    else:
        try:
            first.self_influence()
            results.append(
                CheckResult(
                    "self-influence",
                    False,
                    "self_influence() answered but 'self_influence' is not in supports",
                    "declare it in supports, so that mislabel detection ranks the method",
                )
            )
        except CapabilityError:
            results.append(CheckResult("self-influence", None, "not declared (no mislabel detection)"))

    if "feature_decomposition" in cls.supports:
        results.append(_decomposition(first, x, targets, scores))
    return results


def _shape(scores: Any, n_test: int, n_train: int, device: Any) -> CheckResult:
    import torch

    if not isinstance(scores, torch.Tensor):
        return CheckResult(
            "shape and dtype", False, f"explain returned {type(scores).__name__}", "return a Tensor"
        )
    seen = f"{tuple(scores.shape)} {str(scores.dtype).replace('torch.', '')} on {scores.device.type}"
    ok = tuple(scores.shape) == (n_test, n_train) and scores.dtype == torch.float32
    ok = ok and scores.device.type == torch.device(device).type
    fix = "" if ok else f"return ({n_test}, {n_train}) float32 on the model's device (self.device_)"
    return CheckResult("shape and dtype", ok, seen, fix)


def _compare(name: str, scores: Tensor, again: Callable[[], Tensor], prefix: str = "") -> CheckResult:
    import torch

    try:
        other = again()
    except Exception as err:  # noqa: BLE001
        return CheckResult(name, False, _error(err), "the second fit must run like the first")
    same_shape = (
        isinstance(other, torch.Tensor) and other.shape == scores.shape and other.dtype == scores.dtype
    )
    # NaN equals NaN here: the "finite" check reports NaN; this one asks whether a rerun repeats it
    if same_shape and torch.allclose(other, scores, rtol=0.0, atol=0.0, equal_nan=True):
        return CheckResult(name, True, f"{prefix}bitwise equal")
    diff = (
        float((other - scores).abs().max())
        if isinstance(other, torch.Tensor) and other.shape == scores.shape
        else float("nan")
    )
    fixes = {
        "deterministic": "draw randomness from torch's global generator (the harness seeds it) or from a "
        "generator seeded by a config option",
        "cache hit": "run the same code on a miss and a hit: set state only in load(), from the artefact",
    }
    return CheckResult(name, False, f"max abs difference {diff:.3g}", fixes[name])


def _decomposition(method: Method, x: Tensor, targets: Tensor, scores: Tensor) -> CheckResult:
    import torch

    try:
        indices = torch.arange(scores.shape[1], device=x.device)
        terms = method.feature_relevance(x[:1], targets[:1], indices)
        gap = float((terms.sum(dim=1).double().cpu() - scores[0].double().cpu()).abs().max())
    except Exception as err:  # noqa: BLE001
        return CheckResult("feature decomposition", False, _error(err), "implement feature_relevance()")
    scale = max(float(scores[0].abs().max()), 1e-12)
    ok = gap <= 1e-4 * scale + 1e-6
    return CheckResult(
        "feature decomposition",
        ok,
        f"rows sum to the explanations within {gap:.2g}",
        "" if ok else "feature_relevance() rows must sum to explain()'s entries",
    )


def _error(err: BaseException) -> str:
    where = traceback.extract_tb(err.__traceback__)[-1] if err.__traceback__ else None
    at = f" (at {Path(where.filename).name}:{where.lineno})" if where else ""
    return f"{type(err).__name__}: {err}{at}"


def format_table(name: str, results: list[CheckResult]) -> str:
    """The results as a plain-text table: check, status, what was seen; the fix under each failure."""
    width = max(len(r.name) for r in results)
    lines = [f"dabench check {name}"]
    for r in results:
        lines.append(f"  {r.name:<{width}}  {r.status:<4}  {r.detail}")
        if r.ok is False and r.fix:
            lines.append(f"  {'':<{width}}        fix: {r.fix}")
    failed = sum(r.ok is False for r in results)
    lines.append(
        f"{name}: {'all checks passed' if not failed else f'{failed} check(s) failed'} "
        f"({sum(r.ok is True for r in results)} passed, {sum(r.ok is None for r in results)} not applicable)"
    )
    return "\n".join(lines)


def passed(results: list[CheckResult]) -> bool:
    return all(r.ok is not False for r in results)
