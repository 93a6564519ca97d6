"""The extras table the CLI names in its errors is pyproject.toml's, and maps modules to extras."""

import re
import tomllib
from pathlib import Path

from loraops.extras import EXTRAS, NOT_IN_ALL, extra_for, missing_extra

PYPROJECT = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())


def test_the_table_lists_exactly_the_distributions_of_each_extra():
    declared = PYPROJECT["project"]["optional-dependencies"]
    for extra in set(declared) - {"test", "all"}:
        names = {re.split(r"[\[<>=!~ ;]", req, maxsplit=1)[0].lower() for req in declared[extra]}
        assert names == set(EXTRAS[extra]), extra
    assert set(EXTRAS) == set(declared) - {"test", "all"}
    assert declared["all"] == [f"loraops[{','.join(e for e in EXTRAS if e not in NOT_IN_ALL)}]"]


def test_a_missing_optional_module_names_its_extra_and_a_core_one_is_a_bug():
    line = missing_extra(ModuleNotFoundError("No module named 'datasketch'", name="datasketch"), "loraops data curate")
    assert line == ("loraops data curate needs the 'data' extra (no module named 'datasketch'): "
                    "pip install 'loraops[data]'")
    assert extra_for("sqlalchemy.orm") == "registry" and extra_for("llguidance") == "serve"
    assert extra_for("ray.serve") == "cluster"
    assert missing_extra(ModuleNotFoundError("No module named 'torch'", name="torch"), "loraops train") is None
