"""The named suites: every spec resolves (names, presets, overrides) without loading data."""

from __future__ import annotations

import pytest

from harness.suites import SUITE_METHODS, SUITES, get_suite


@pytest.mark.parametrize("name", sorted(SUITES))
def test_every_spec_resolves(name: str) -> None:
    specs = get_suite(name)
    resolved = [spec.resolve() for spec in specs]
    assert len({r.run_id for r in resolved}) == len(specs), "two specs of one suite compute the same run"
    names = {r.method.name for r in resolved}
    assert set(SUITE_METHODS) <= names
    # the suites run every method at its quick() preset
    for r in resolved:
        config_cls = type(r.method.config)
        expected = config_cls.from_dict(dict(r.spec.method.overrides), base=config_cls.quick())
        assert r.method.config == expected


def test_unknown_suite_names_the_choices() -> None:
    from harness.config import ConfigError

    with pytest.raises(ConfigError, match="choose one of"):
        get_suite("defualt")
