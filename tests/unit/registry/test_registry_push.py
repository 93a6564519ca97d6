"""Pushing versions: numbering, metadata, base checks, immutability, failed uploads."""

import json
import shutil

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from registry_helpers import FINGERPRINT, make_adapter

from loraops.errors import (AdapterFormatError, BaseMismatchError, NotFoundError, RegistryError,
                            UnregisteredBaseError, UnsafeFileError)
from loraops.registry.blobs import BlobStore
from loraops.registry.models import VersionRow


def test_versions_are_numbered_from_one_per_adapter(registry, base, adapter_dir):
    assert [registry.push(adapter_dir, "a").version for _ in range(3)] == [1, 2, 3]
    assert registry.push(adapter_dir, "b").version == 1
    assert [(a.name, a.latest) for a in registry.list_adapters()] == [("a", 3), ("b", 1)]


def test_push_records_metadata_and_lineage(registry, base, tmp_path):
    registry.push(make_adapter(tmp_path / "p1", seed=1), "parent-one")
    registry.push(make_adapter(tmp_path / "p2", seed=2), "parent-two")
    child_dir = make_adapter(tmp_path / "child", dataset_digest="sha256:data", hyperparameters={"r": 4},
                             metrics={"loss": 0.5},
                             parents=[{"name": "parent-one", "version": 1, "weight": 0.7},
                                      {"name": "parent-two", "version": 1, "weight": 0.3},
                                      {"name": "local-dir", "version": None, "weight": 1.0}])
    v = registry.push(child_dir, "child", tenant="acme", created_by="alice")
    assert (v.dataset_digest, v.hyperparameters, v.metrics) == ("sha256:data", {"r": 4}, {"loss": 0.5})
    assert (v.tenant, v.created_by, v.base_fingerprint) == ("acme", "alice", FINGERPRINT)
    assert v.eval_results is None
    assert [(p.name, p.version, p.weight) for p in v.parents] == [("parent-one", 1, 0.7),
                                                                    ("parent-two", 1, 0.3)]
    assert registry.show("child").versions[0] == v


def test_the_same_files_give_the_same_digest(registry, base, adapter_dir, tmp_path):
    other = make_adapter(tmp_path / "other", seed=5)
    assert registry.push(adapter_dir, "a").digest == registry.push(adapter_dir, "b").digest
    assert registry.push(other, "a").digest != registry.resolve("a@1").digest


def test_unregistered_base_is_refused(registry, adapter_dir):
    with pytest.raises(UnregisteredBaseError, match=FINGERPRINT):
        registry.push(adapter_dir, "a")
    assert registry.list_adapters() == []


def test_register_base_registers_it_under_its_name(registry, adapter_dir):
    v = registry.push(adapter_dir, "a", register_base=True)
    assert v.base_fingerprint == FINGERPRINT
    assert registry.register_base(FINGERPRINT, "another-name").name == "tiny"  # first name is kept


def test_adapter_without_fingerprint_needs_one_given(registry, base, tmp_path):
    peft_dir = make_adapter(tmp_path / "peft")
    (peft_dir / "loraops.json").unlink()  # as PEFT writes it
    with pytest.raises(UnregisteredBaseError, match="--base-fingerprint"):
        registry.push(peft_dir, "a")
    assert registry.push(peft_dir, "a", base_fingerprint=FINGERPRINT).base_fingerprint == FINGERPRINT


def test_wrong_base_fingerprint_is_refused(registry, base, adapter_dir):
    with pytest.raises(BaseMismatchError):
        registry.push(adapter_dir, "a", base_fingerprint="sha256:" + "cd" * 32)


def test_pickle_adapter_is_refused(registry, base, adapter_dir, tmp_path):
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(adapter_dir / "adapter_config.json", pickled)
    (pickled / "adapter_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(UnsafeFileError):
        registry.push(pickled, "a")


def test_tenant_of_an_adapter_cannot_change(registry, base, adapter_dir):
    registry.push(adapter_dir, "a", tenant="acme")
    with pytest.raises(RegistryError, match="acme"):
        registry.push(adapter_dir, "a", tenant="globex")
    assert registry.push(adapter_dir, "a").tenant == "acme"
    assert [a.name for a in registry.list_adapters(tenant="acme")] == ["a"]
    assert registry.list_adapters(tenant="globex") == []


def test_record_eval_is_the_only_change_after_push(registry, base, adapter_dir):
    v1 = registry.push(adapter_dir, "a")
    registry.push(adapter_dir, "a")
    evaluated = registry.record_eval("a", 1, {"f1": 0.9})
    assert evaluated.eval_results == {"f1": 0.9}
    assert evaluated == v1.__class__(**{**v1.__dict__, "eval_results": {"f1": 0.9}})
    with pytest.raises(NotFoundError):
        registry.record_eval("a", 7, {"f1": 0.9})


def test_versions_refuse_changes_even_through_the_orm(registry, base, adapter_dir):
    registry.push(adapter_dir, "a")
    with Session(registry._engine) as s:
        row = s.scalars(select(VersionRow)).one()
        row.digest = "0" * 64
        with pytest.raises(RegistryError, match="immutable"):
            s.commit()
    assert registry.resolve("a@1").digest != "0" * 64


def test_failed_upload_leaves_no_version(registry, base, adapter_dir, monkeypatch):
    def broken(self, data):
        raise OSError("disk full")

    monkeypatch.setattr(BlobStore, "put_bytes", broken)  # the manifest is stored last
    with pytest.raises(OSError):
        registry.push(adapter_dir, "a")
    monkeypatch.undo()
    assert registry.list_adapters() == []
    assert registry.push(adapter_dir, "a").version == 1


def test_manifest_lists_the_adapter_files(registry, base, adapter_dir):
    v = registry.push(adapter_dir, "a")
    files = json.loads(registry.blobs.read_bytes(v.digest))["files"]
    assert sorted(files) == ["adapter_config.json", "adapter_model.safetensors", "loraops.json"]
    assert files["adapter_config.json"]["size"] == (adapter_dir / "adapter_config.json").stat().st_size


def test_malformed_metadata_is_refused_before_upload(registry, base, tmp_path):
    bad = make_adapter(tmp_path / "bad", metrics=[0.5])
    with pytest.raises(AdapterFormatError, match="metrics"):
        registry.push(bad, "a")
    assert not (registry.home / "blobs").exists()
