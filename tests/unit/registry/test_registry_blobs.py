"""The blob store and fetch: content addressing, atomic writes, verification on every read."""

import pytest

from loraops.errors import BlobCorruptError
from loraops.lora import read_adapter
from loraops.registry.blobs import BlobStore


def test_blobs_are_addressed_by_their_sha256(tmp_path):
    store = BlobStore(tmp_path)
    digest = store.put_bytes(b"hello")
    assert digest == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    assert store.path(digest) == tmp_path / "sha256" / "2c" / digest[2:]
    assert store.read_bytes(digest) == b"hello"
    assert [p.name for p in store.path(digest).parent.iterdir()] == [digest[2:]]  # no temp file left


def test_corrupt_blob_is_refused_on_read(tmp_path):
    store = BlobStore(tmp_path)
    digest = store.put_bytes(b"hello")
    store.path(digest).write_bytes(b"jello")
    with pytest.raises(BlobCorruptError, match=digest):
        store.read_bytes(digest)
    with pytest.raises(BlobCorruptError):
        store.copy_to(digest, tmp_path / "out")
    store.put_bytes(b"hello")  # storing the same bytes again repairs it
    assert store.read_bytes(digest) == b"hello"


def test_missing_blob_is_refused(tmp_path):
    with pytest.raises(BlobCorruptError, match="missing"):
        BlobStore(tmp_path).read_bytes("ab" * 32)


def test_fetch_materialises_a_readable_adapter(registry, base, adapter_dir):
    registry.push(adapter_dir, "a")
    path = registry.fetch("a@1")
    assert path.parent == registry.home / "cache" / "adapters"
    fetched, original = read_adapter(path), read_adapter(adapter_dir)
    assert fetched.meta == original.meta
    assert all((fetched.modules[k].A == m.A).all() for k, m in original.modules.items())
    assert registry.fetch("a") == path  # cached


def test_fetch_refuses_a_corrupt_weights_blob(registry, base, adapter_dir):
    registry.push(adapter_dir, "a")
    weights = registry.blobs.path(registry.blobs.put_file(adapter_dir / "adapter_model.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(BlobCorruptError):
        registry.fetch("a@1")
    assert not (registry.home / "cache" / "adapters" / registry.resolve("a@1").digest).exists()


def test_fetch_rebuilds_a_tampered_cache(registry, base, adapter_dir):
    registry.push(adapter_dir, "a")
    path = registry.fetch("a@1")
    (path / "adapter_config.json").write_text("{}")
    assert registry.fetch("a@1") == path
    assert (path / "adapter_config.json").read_bytes() == (adapter_dir / "adapter_config.json").read_bytes()
