"""The documentation site's structure: every preset has a seed page showing the preset file and
a recipe that tests run, so a new preset or recipe cannot go undocumented. (The site itself is
built with ``mkdocs build --strict`` by the test command.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway_servers import serve
from ratekeeper.policy import preset_path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PRESETS = sorted(p.stem for p in preset_path("musique").parent.glob("*.toml"))


def test_the_five_seed_presets_are_there() -> None:
    assert PRESETS == ["aisoule", "beatpass", "musicbrainz", "musique", "radio"]


@pytest.mark.parametrize("name", PRESETS)
def test_each_preset_has_a_page_with_its_file_and_a_tested_recipe(name: str) -> None:
    page = (DOCS / "seeds" / f"{name}.md").read_text(encoding="utf-8")
    preset = preset_path(name).relative_to(ROOT).as_posix()
    assert f'--8<-- "{preset}"' in page
    recipe = f"examples/recipes/{name}.py"
    assert f'--8<-- "{recipe}"' in page
    assert (ROOT / recipe).is_file()
    # The page ends with its recipe: the last section, after the preset.
    sections = [line for line in page.splitlines() if line.startswith("## ")]
    assert sections[-1].startswith("## The recipe")
    assert page.index(f'--8<-- "{preset}"') < page.index(f'--8<-- "{recipe}"')
    tests = (ROOT / "tests" / "test_recipes.py").read_text(encoding="utf-8")
    assert f'recipe("{name}")' in tests


def test_every_recipe_is_shown_on_a_page() -> None:
    pages = "\n".join(p.read_text(encoding="utf-8") for p in DOCS.rglob("*.md"))
    for recipe in sorted((ROOT / "examples" / "recipes").glob("*.py")):
        assert f'--8<-- "examples/recipes/{recipe.name}"' in pages, recipe.name


def test_test_command_builds_the_site_strictly() -> None:
    script = (ROOT / "scripts" / "test.sh").read_text(encoding="utf-8")
    build = script.index("mkdocs build --strict")
    assert script.index("mypy --strict src") < build < script.index("pytest")


def test_getting_started_shows_the_real_start_up_line(tmp_path: Path) -> None:
    page = (DOCS / "getting-started.md").read_text(encoding="utf-8")
    shown = next(line for line in page.splitlines() if line.startswith("ratekeeper serve: "))
    store = tmp_path / "ratekeeper.db"
    with serve("--preset", "musique", "--store", f"sqlite:///{store}", cwd=tmp_path) as process:
        printed = process.output().splitlines()[0]
        port = process.url.rsplit(":", 1)[1]
    printed = printed.replace(str(store), "/path/to/ratekeeper.db").replace(f":{port} ", ":8080 ")
    assert printed == shown, "update docs/getting-started.md to the start-up line printed now"
