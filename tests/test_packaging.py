"""What an installer of ratekeeper sees: the version, the licence, the extras, and a clear
message (not a traceback) when an optional extra is missing."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import ratekeeper

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter of this environment."""
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


def without(modules: list[str], then: str) -> str:
    """Code that makes ``modules`` unimportable (as when an extra is not installed), then runs
    ``then``."""
    return f"import sys\nfor name in {modules!r}:\n    sys.modules[name] = None\n{then}"


def test_version_flag_prints_the_package_version() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+(\S*)", ratekeeper.__version__)
    for flag in ("--version", "-V"):
        result = subprocess.run(
            [sys.executable, "-m", "ratekeeper.cli", flag],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"ratekeeper {ratekeeper.__version__}\n"


def test_installed_console_script_answers_version() -> None:
    script = Path(sys.executable).parent / "ratekeeper"
    if not script.exists():
        pytest.skip("ratekeeper is not installed as a console script in this environment")
    result = subprocess.run(
        [str(script), "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"ratekeeper {ratekeeper.__version__}"


def test_version_is_written_in_one_place() -> None:
    assert "version" in PYPROJECT["project"]["dynamic"]
    assert "version" not in PYPROJECT["project"]
    path = ROOT / PYPROJECT["tool"]["hatch"]["version"]["path"]
    assert f'__version__ = "{ratekeeper.__version__}"' in path.read_text(encoding="utf-8")


def test_usage_mentions_version() -> None:
    result = run_python("from ratekeeper.cli import main; raise SystemExit(main(['--help']))")
    assert result.returncode == 0
    assert "--version" in result.stdout


@pytest.mark.parametrize(
    ("command", "missing", "extra"),
    [
        ("fetch", ["httpx"], "client"),
        ("serve", ["starlette"], "http"),
    ],
)
def test_cli_names_the_missing_extra(command: str, missing: list[str], extra: str) -> None:
    result = run_python(
        without(
            missing,
            "from ratekeeper.cli import main\n"
            f"raise SystemExit(main([{command!r}, 'http://127.0.0.1:9/']))",
        )
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"ratekeeper {command} needs the {extra} extra" in result.stderr
    assert f"pip install 'ratekeeper[{extra}]'" in result.stderr


def test_help_and_version_work_without_any_extra() -> None:
    blocked = ["httpx", "hishel", "starlette", "uvicorn", "redis", "aiohttp"]
    result = run_python(
        without(blocked, "from ratekeeper.cli import main\nraise SystemExit(main(['--version']))")
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ratekeeper ")


def test_licence_file_matches_the_declared_licence() -> None:
    project = PYPROJECT["project"]
    assert project["license"] == "MIT"
    assert project["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text(encoding="utf-8").startswith("MIT License")
    # PEP 639: the licence expression replaces licence classifiers.
    assert not [c for c in project["classifiers"] if c.startswith("License ::")]
    assert {"Documentation", "Source", "Issues", "Changelog"} <= set(project["urls"])


CONTRIBUTOR_EXTRAS = {"dev", "docs", "bench"}


def test_feature_extras_carry_no_test_or_docs_tools() -> None:
    extras = PYPROJECT["project"]["optional-dependencies"]
    features = set(extras) - CONTRIBUTOR_EXTRAS
    assert {"redis", "http", "client"} <= features
    tools = ("pytest", "hypothesis", "ruff", "mypy", "mkdocs", "ratekeeper[")
    for feature in features:
        for requirement in extras[feature]:
            if requirement.startswith("ratekeeper["):
                # A feature may build on another feature (drf on django), never on dev/docs.
                named = set(requirement.removeprefix("ratekeeper[").split("]")[0].split(","))
                assert named <= features, (feature, requirement)
                continue
            assert not requirement.startswith(tools), (feature, requirement)
    # The contributor extras build on the features, never the other way round.
    assert extras["dev"][0].startswith("ratekeeper[")
    assert "docs" in extras["dev"][0]


@pytest.mark.parametrize(
    "statement",
    ["import ratekeeper.client", "from ratekeeper.client import RateLimitTransport"],
)
def test_client_import_without_httpx_names_the_extra(statement: str) -> None:
    result = run_python(without(["httpx"], statement))
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last == (
        "ModuleNotFoundError: ratekeeper.client needs the client extra (httpx is missing): "
        "pip install 'ratekeeper[client]'"
    )


def test_package_imports_without_any_extra() -> None:
    blocked = ["httpx", "hishel", "starlette", "uvicorn", "redis", "aiohttp", "prometheus_client"]
    result = run_python(without(blocked, "import ratekeeper\nprint(ratekeeper.Limiter.__name__)"))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Limiter\n"
