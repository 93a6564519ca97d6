"""Names, tenants, stages and refs are validated before anything touches the database or disk."""

import pytest

from loraops.errors import InvalidNameError
from loraops.registry.names import Ref

BAD = ["../etc", "a/b", "a\\b", "..", ".hidden", "-dash", "Upper", "", "a b", "x" * 65, "a\x00b", "ü"]


@pytest.mark.parametrize("name", BAD)
def test_bad_adapter_names_are_refused(registry, base, adapter_dir, name):
    with pytest.raises(InvalidNameError):
        registry.push(adapter_dir, name)
    assert list((registry.home / "blobs").glob("**/*")) == []  # refused before any upload


@pytest.mark.parametrize("tenant", ["../acme", "acme/x", "ACME"])
def test_bad_tenants_are_refused(registry, base, adapter_dir, tenant):
    with pytest.raises(InvalidNameError):
        registry.push(adapter_dir, "a", tenant=tenant)


@pytest.mark.parametrize("stage", ["../production", "prod/x", "3", ""])
def test_bad_stages_are_refused(registry, base, adapter_dir, stage):
    registry.push(adapter_dir, "a")
    with pytest.raises(InvalidNameError):
        registry.promote("a", 1, stage=stage)


def test_refs_parse():
    assert Ref.parse("a") == Ref("a")
    assert Ref.parse("a@3") == Ref("a", version=3)
    assert Ref.parse("a.b-c_d@staging") == Ref("a.b-c_d", stage="staging")
    for bad in ("a@", "a@0", "a@../x", "../a@1", "a@1@2"):
        with pytest.raises(InvalidNameError):
            Ref.parse(bad)
