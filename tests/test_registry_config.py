"""Registry and config behaviour: duplicates, base classes, did-you-mean, lossless JSON, hashing."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from harness.config import Config, ConfigError, option
from harness.registry import METHODS, METRICS, TASKS, Registry, RegistryError


@pytest.mark.parametrize("registry", [METHODS, TASKS, METRICS], ids=lambda r: r.kind)
def test_every_entry_loads_and_subclasses_its_base(registry: Registry) -> None:
    for name in registry.names():
        cls = registry.get(name)
        assert cls.name == name
        assert dataclasses.is_dataclass(cls.Config)
        assert registry.description(name)


def test_unknown_name_suggests_close_match() -> None:
    with pytest.raises(RegistryError, match=r"did you mean 'feature_similarity'"):
        METHODS.get("feature_similarty")
    with pytest.raises(RegistryError, match=r"unknown task 'zzz'") as info:
        TASKS.get("zzz")
    assert "did you mean" not in str(info.value)


def test_duplicate_and_wrong_base_are_errors() -> None:
    registry = Registry("method", "harness.protocols:Method", "methods")
    registry.add("thing", "some.module:Thing", "a thing")
    with pytest.raises(RegistryError, match="duplicate method name 'thing'"):
        registry.add("thing", "other.module:Other", "another")

    class NotAMethod:
        Config = Config

    with pytest.raises(RegistryError, match="must subclass harness.protocols.Method"):
        registry.add("bad", NotAMethod, "not a method")

    registry.add("lazy_bad", f"{__name__}:_NotAMethodEither", "lazy")
    with pytest.raises(RegistryError, match="must subclass"):
        registry.get("lazy_bad")


class _NotAMethodEither:
    pass


def test_list_does_not_import_torch() -> None:
    code = (
        "import sys; from dabench.cli import main; main(['list', 'methods']); "
        "assert 'torch' not in sys.modules, 'dabench list imported torch'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "random" in result.stdout


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Cfg(Config):
    C: float = option(1e-3, "regularisation")
    steps: int = option(10, "iterations")
    kind: str = option("cos", "similarity")
    layers: tuple[str, ...] = option(("fc",), "layers")
    limit: int | None = option(None, "optional cap")

    @classmethod
    def quick(cls) -> _Cfg:
        return cls(steps=2)


def test_config_roundtrip_hash_and_coercion() -> None:
    cfg = _Cfg.from_dict({"C": "0.1", "steps": "1e3", "layers": "a,b", "limit": "none"})
    assert cfg == _Cfg(C=0.1, steps=1000, layers=("a", "b"), limit=None)
    again = _Cfg.from_dict(cfg.to_dict())
    assert again == cfg and again.config_hash() == cfg.config_hash()
    assert _Cfg(C=0.2).config_hash() != cfg.config_hash()
    assert _Cfg.from_dict({}, base=_Cfg.preset("quick")).steps == 2


def test_config_rejects_unknown_keys_and_bad_values() -> None:
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['Cc'\].*valid keys"):
        _Cfg.from_dict({"Cc": 1})
    with pytest.raises(ConfigError, match="cannot read 'abc'"):
        _Cfg.from_dict({"steps": "abc"})
    with pytest.raises(ConfigError, match="unknown preset"):
        _Cfg.preset("fast")
    with pytest.raises(dataclasses.FrozenInstanceError):
        _Cfg().C = 1.0  # type: ignore[misc]


def test_every_key_value_option_goes_through_one_parser():
    from harness.config import parse_key_values
    from harness.specs import ComponentSpec

    assert parse_key_values([" C = 0.001", "tol=1e-4"], "--option") == (("C", "0.001"), ("tol", "1e-4"))
    assert parse_key_values(["path=a=b"], "--option") == (("path", "a=b"),)  # the first '=' splits
    with pytest.raises(ConfigError, match=r"--task-option: cannot read 'n_train': write KEY=VALUE"):
        parse_key_values(["n_train"], "--task-option")
    with pytest.raises(ConfigError, match="cannot read '=3'"):
        parse_key_values(["=3"], "--option")
    with pytest.raises(ConfigError, match="'C' is given twice"):
        parse_key_values(["C=1", "C=2"], "--method-option")
    # the name:k=v form fails alike
    assert ComponentSpec.parse("dualda: C=0.1 ,tol=1e-3").overrides == (("C", "0.1"), ("tol", "1e-3"))
    with pytest.raises(ConfigError, match="'dualda:C': cannot read 'C': write KEY=VALUE"):
        ComponentSpec.parse("dualda:C")
    # no command line parses KEY=VALUE on its own any more
    root = Path(__file__).resolve().parent.parent
    for path in [*(root / "dabench").glob("*.py"), *(root / "harness").glob("*.py")]:
        if path.name != "config.py":
            assert 'partition("=")' not in path.read_text(), f"{path} parses KEY=VALUE by hand"
