"""Plugin discovery: ``--plugin`` with a .py path or a module from the current folder, and the
``dabench.plugins`` entry points of installed packages (issue 15, section 2).

Every check runs the CLI in a fresh subprocess, so nothing registered here leaks into other tests.
"""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DABENCH = Path(sys.executable).parent / "dabench"

METHOD_SOURCE = '''
"""A tiny outside method (shaped like methods/random_baseline.py)."""

from dataclasses import dataclass

import torch

from harness.config import Config, option
from harness.protocols import Method
from harness.registry import register_method


@dataclass(frozen=True, kw_only=True)
class ConstantConfig(Config):
    value: float = option(1.0, "the score of every training point")


@register_method("{name}", "{description}")
class Constant(Method):
    Config = ConstantConfig
    version = "1"
    supports = frozenset()
    attributes_through = "none"

    def load(self, artefact, model, train):
        self.n_train_ = len(train)

    def explain(self, x, targets):
        self._require_fitted()
        return torch.full((len(x), self.n_train_), self.config.value, device=x.device)
'''


def write_method(folder: Path, stem: str, name: str, description: str = "An outside method.") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}.py"
    path.write_text(METHOD_SOURCE.format(name=name, description=description))
    return path


def dabench(
    *args: str, cwd: Path, pythonpath: Path | None = None, timeout: int = 300
) -> subprocess.CompletedProcess[str]:
    """Run the installed ``dabench`` in ``cwd``; PYTHONPATH is only ``pythonpath`` (or unset)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run(
        [str(DABENCH), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def listed(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    assert result.returncode == 0, result.stderr
    lines = [line.split(None, 1) for line in result.stdout.splitlines() if line.strip()]
    return {parts[0]: parts[1] if len(parts) > 1 else "" for parts in lines}


def test_plugin_path_outside_the_repo_registers_a_method(tmp_path: Path) -> None:
    path = write_method(tmp_path / "elsewhere", "my_method", "my_method", "Constant scores from a file.")
    workdir = tmp_path / "work"
    workdir.mkdir()
    methods = listed(dabench("list", "methods", "--plugin", str(path), cwd=workdir))
    assert methods["my_method"] == "Constant scores from a file."
    assert "random" in methods  # the built-in methods are still there
    # a relative path works too, and loading the same file twice is harmless
    rel = os.path.relpath(path, workdir)
    methods = listed(dabench("list", "methods", "--plugin", rel, "--plugin", str(path), cwd=workdir))
    assert "my_method" in methods


def test_plugin_module_from_the_current_folder(tmp_path: Path) -> None:
    write_method(tmp_path, "cwd_method", "cwd_method", "Constant scores from a module.")
    methods = listed(dabench("list", "methods", "--plugin", "cwd_method", cwd=tmp_path))
    assert methods["cwd_method"] == "Constant scores from a module."
    # without the flag the method is not there
    assert "cwd_method" not in listed(dabench("list", "methods", cwd=tmp_path))


def test_plugin_that_cannot_be_imported_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "broken_plugin.py").write_text("raise RuntimeError('boom')\n")
    for plugin in ("no_such_plugin_module", "broken_plugin", str(tmp_path / "missing.py")):
        result = dabench("list", "methods", "--plugin", plugin, cwd=tmp_path)
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert plugin in lines[0] or repr(plugin) in lines[0]
    assert "RuntimeError: boom" in lines[0] or "not found" in lines[0]
    result = dabench("list", "methods", "--plugin", "broken_plugin", cwd=tmp_path)
    assert "RuntimeError: boom" in result.stderr


def make_package(root: Path, name: str, dist: str, plugin_source: str, entry: str) -> Path:
    """A source tree ``root/dist`` with a pyproject.toml declaring ``entry`` in dabench.plugins."""
    pkgdir = root / dist
    (pkgdir / name).mkdir(parents=True)
    (pkgdir / name / "__init__.py").write_text("")
    (pkgdir / name / "plugin.py").write_text(plugin_source)
    (pkgdir / "pyproject.toml").write_text(
        textwrap.dedent(
            f"""\
            [build-system]
            requires = ["setuptools"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "{dist}"
            version = "0.1"

            [tool.setuptools]
            packages = ["{name}"]

            [project.entry-points."dabench.plugins"]
            {entry}
            """
        )
    )
    return pkgdir


def pip_install(pkgdir: Path, target: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            str(pkgdir),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def installed_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pip --target folder with a working plugin package and a broken one."""
    root = tmp_path_factory.mktemp("plugin-packages")
    site = root / "site"
    good = make_package(
        root,
        "mine_pkg",
        "mine-pkg",
        METHOD_SOURCE.format(name="mine", description="An installed method."),
        'mine = "mine_pkg.plugin"',
    )
    broken = make_package(
        root,
        "broken_pkg",
        "broken-pkg",
        "raise ImportError('needs a library that is not installed')\n",
        'broken = "broken_pkg.plugin"',
    )
    pip_install(good, site)
    pip_install(broken, site)
    return site


def test_installed_entry_point_registers_without_a_flag(installed_site: Path, tmp_path: Path) -> None:
    result = dabench("list", "methods", cwd=tmp_path, pythonpath=installed_site)
    methods = listed(result)
    assert methods["mine"] == "An installed method."
    assert "random" in methods


def test_broken_entry_point_warns_once_and_the_command_goes_on(installed_site: Path, tmp_path: Path) -> None:
    result = dabench("list", "methods", cwd=tmp_path, pythonpath=installed_site)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(warnings) == 1, result.stderr
    (line,) = warnings
    assert "broken-pkg" in line and "broken = broken_pkg.plugin" in line
    assert "ImportError: needs a library that is not installed" in line
    methods = listed(result)
    assert {"random", "dualda", "mine"} <= set(methods)  # built-ins and the working plugin still load


def test_workers_load_the_same_plugins(installed_site: Path, tmp_path: Path) -> None:
    """A dispatch job (harness.dispatch.WithPlugins) in a fresh process sees every plugin."""
    path = write_method(tmp_path / "elsewhere", "file_method", "file_method")
    write_method(tmp_path / "workdir", "mod_method", "mod_method")
    code = textwrap.dedent(
        f"""
        import cloudpickle, sys
        from harness.dispatch import WithPlugins
        from harness.registry import load_plugin, loaded_plugins
        load_plugin({str(path)!r})
        load_plugin("mod_method")
        # the job looks the registry up in the worker (a global here would be pickled by value)
        names = lambda spec: ",".join(__import__("harness.registry").registry.METHODS.names())
        job = WithPlugins(names, tuple(loaded_plugins()))
        sys.stdout.buffer.write(cloudpickle.dumps(job))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    submit = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path / "workdir", env=env, capture_output=True, timeout=120
    )
    assert submit.returncode == 0, submit.stderr.decode()
    worker_code = "import pickle, sys; print(pickle.loads(sys.stdin.buffer.read())(None))"
    worker = subprocess.run(
        [sys.executable, "-c", worker_code],
        cwd=tmp_path,  # a worker may start in another folder
        env={**env, "PYTHONPATH": str(installed_site)},
        input=submit.stdout,
        capture_output=True,
        timeout=120,
    )
    assert worker.returncode == 0, worker.stderr.decode()
    names = worker.stdout.decode().strip().split(",")
    assert {"file_method", "mod_method", "mine", "random"} <= set(names)


# ----- the README's method, installed as a package: listed, checked, planned and ranked ---------------
def readme_method() -> str:
    """The code block of the README's "Add your method" section (the file ``my_method.py``)."""
    text = (REPO / "README.md").read_text()
    match = re.search(r"```python\n(# my_method\.py\n.*?)```", text, re.S)
    assert match, "README.md lost its '# my_method.py' example"
    return match.group(1)


def test_readme_method_runs_as_a_plugin_file(tmp_path: Path) -> None:
    """The README's steps as written: ``dabench check nearest --plugin my_method.py`` passes."""
    (tmp_path / "my_method.py").write_text(readme_method())
    result = dabench("check", "nearest", "--plugin", "my_method.py", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "nearest: all checks passed" in result.stdout
    assert re.search(r"cache hit +pass", result.stdout)


@pytest.mark.slow
def test_an_installed_outside_method_is_listed_checked_planned_and_ranked(tmp_path: Path) -> None:
    """Issue 15's "done when": the README's method as a pip-installed package with a dabench.plugins
    entry point, no flag anywhere."""
    site = tmp_path / "site"
    package = make_package(
        tmp_path / "src", "my_package", "my-package", readme_method(), 'nearest = "my_package.plugin"'
    )
    pip_install(package, site)
    work = tmp_path / "work"
    work.mkdir()

    assert "nearest" in listed(dabench("list", "methods", cwd=work, pythonpath=site))

    check = dabench("check", "nearest", cwd=work, pythonpath=site)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "nearest: all checks passed" in check.stdout

    planned = dabench("suite", "default", "--list", cwd=work, pythonpath=site)
    assert planned.returncode == 0, planned.stderr
    mine = [line for line in planned.stdout.splitlines() if "  nearest  " in line]
    assert len(mine) == 4 * 3  # four variants, three seeds
    assert all(line.startswith("to run") for line in mine)
    assert not [line for line in mine if "mislabel_detection" in line]  # no self-influence declared

    results, cache = tmp_path / "results", tmp_path / "cache"
    small = ["--methods", "nearest,feature_similarity,random", "--n-train", "120", "--n-test", "20"]
    small += ["--metrics", "class_detection", "--task-option", "epochs=2"]  # a model in seconds
    small += ["--results-dir", str(results), "--cache-dir", str(cache)]
    run = dabench("suite", "quick", *small, cwd=work, pythonpath=site, timeout=900)
    assert run.returncode == 0, run.stdout + run.stderr
    with open(results / "tables" / "ranks.csv") as handle:
        ranks = list(csv.DictReader(handle))
    assert {row["method_label"] for row in ranks} == {"nearest", "feature_similarity", "random"}
    assert all(row["avg_rank"] for row in ranks)
    with open(results / "tables" / "metrics.csv") as handle:
        assert any(row["method"] == "nearest" and row["class_detection"] for row in csv.DictReader(handle))
    # the same grid again: every record is reused, nothing computes
    again = dabench("suite", "quick", *small, "--list", cwd=work, pythonpath=site)
    assert "0 to run" in again.stdout, again.stdout
