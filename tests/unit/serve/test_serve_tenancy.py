"""Tenants file parsing, key checks, visibility."""

import hashlib

import pytest

from loraops.errors import ConfigError
from loraops.serve.errors import AuthError
from loraops.serve.tenancy import Tenants

GOOD = """
[tenants.acme]
api_keys = ["sk-acme-12345678"]
adapters = ["inv", "support"]
allow_base = false
rate_limit = { requests_per_minute = 60, tokens_per_minute = 1000, max_concurrent = 2 }

[tenants.beta]
api_key_hashes = ["sha256:%s"]
adapters = ["beta-x"]
allow_base = true
""" % hashlib.sha256(b"sk-beta-12345678").hexdigest()


@pytest.fixture
def tenants(tmp_path):
    (tmp_path / "t.toml").write_text(GOOD)
    return Tenants.load(tmp_path / "t.toml")


def test_plain_and_hashed_keys_authenticate(tenants):
    assert tenants.authenticate("sk-acme-12345678").name == "acme"
    assert tenants.authenticate("sk-beta-12345678").name == "beta"
    assert tenants.authenticate("sk-acme-12345678").rate_limit.max_concurrent == 2


@pytest.mark.parametrize("key", [None, "", "sk-acme-1234567", "sk-acme-123456789", "sha256:" + "0" * 64])
def test_missing_or_wrong_keys_are_refused(tenants, key):
    with pytest.raises(AuthError):
        tenants.authenticate(key)


def test_a_tenant_uses_only_its_adapters_and_the_base_if_allowed(tenants):
    acme, beta = tenants.authenticate("sk-acme-12345678"), tenants.authenticate("sk-beta-12345678")
    assert acme.can_use("inv", "base") and acme.can_use("inv@3", "base")
    assert not acme.can_use("beta-x", "base") and not acme.can_use("base", "base")
    assert beta.can_use("base", "base") and not beta.can_use("inv", "base")


@pytest.mark.parametrize("text,match", [
    ("[tenants.x]\nadapters = []\n", "no api_keys"),
    ('[tenants.x]\napi_key_hashes = ["md5:abc"]\n', "sha256"),
    ('[tenants.x]\napi_keys = ["short"]\n', "at least 8"),
    ('[tenants.x]\napi_keys = ["sk-12345678"]\nrate_limit = { requests_per_minute = -1 }\n', "positive"),
    ('[tenants.x]\napi_keys = ["sk-12345678"]\nallow_base = "yes"\n', "allow_base"),
    ('[tenants.x]\napi_keys = ["sk-12345678"]\n[tenants.y]\napi_keys = ["sk-12345678"]\n', "share an API key"),
    ("not toml = = =", "not valid TOML"),
    ("[other]\n", "no \\[tenants"),
])
def test_invalid_tenants_files_are_refused_with_a_clear_error(tmp_path, text, match):
    (tmp_path / "t.toml").write_text(text)
    with pytest.raises(ConfigError, match=match):
        Tenants.load(tmp_path / "t.toml")


def test_fine_tuning_quotas_have_defaults_and_are_validated(tenants, tmp_path):
    from loraops.serve.tenancy import FineTuningQuota

    assert tenants.authenticate("sk-acme-12345678").fine_tuning == FineTuningQuota()
    (tmp_path / "q.toml").write_text('[tenants.q]\napi_keys = ["sk-q-12345678"]\n'
                                     'fine_tuning = { max_concurrent_jobs = 1, max_tokens_per_job = 500 }\n')
    quota = Tenants.load(tmp_path / "q.toml").authenticate("sk-q-12345678").fine_tuning
    assert (quota.max_concurrent_jobs, quota.max_tokens_per_job) == (1, 500)
    assert quota.max_file_bytes == FineTuningQuota().max_file_bytes
    for bad in ("{ max_concurrent_jobs = 0 }", "{ max_jobs = 1 }", "3"):
        (tmp_path / "bad.toml").write_text(f'[tenants.q]\napi_keys = ["sk-q-12345678"]\nfine_tuning = {bad}\n')
        with pytest.raises(ConfigError, match="fine_tuning"):
            Tenants.load(tmp_path / "bad.toml")
