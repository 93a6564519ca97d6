"""Hostile adapter directories through the admin route: each is `400 adapter_load_failed` naming the
reason, never a 201 or a 500, and nobody else's requests notice."""

import pytest
from hostile import ADMIN, assert_healthy, assert_openai_error, bystander, hostile_adapters, post


@pytest.fixture(scope="module")
def bad(env, tmp_path_factory):
    return hostile_adapters(tmp_path_factory.mktemp("bad"), env["model"], env["meta"])


CASES = ["nan-weights", "inf-weights", "rank-0", "int8", "bool", "complex", "float8", "scalar-tensor",
         "alpha-infinity", "alpha-1e309", "alpha-pattern-string", "alpha-pattern-list", "rank-string",
         "dora-string", "targets-nested", "config-nested-deep", "config-dict-nested", "config-list",
         "config-not-utf8", "meta-list", "meta-parents-string", "meta-parent-version-x",
         "meta-parent-weight-nan", "meta-fingerprint-number", "config-is-a-directory"]


@pytest.mark.parametrize("case", CASES)
def test_a_hostile_adapter_is_refused_by_the_admin_route(env, bad, case):
    path, fragment = bad[case]
    with bystander(env):
        r = post(env, "/admin/adapters", {"name": "acme-bad", "path": str(path)}, key=ADMIN)
        err = assert_openai_error(r, 400, "adapter_load_failed", "path")
    assert fragment in err["message"], err["message"]
    assert_openai_error(post(env, "/v1/completions", {"model": "acme-bad", "prompt": "x"}), 404, "model_not_found")
    assert_healthy(env)


def test_the_good_original_still_loads(env, bad):
    good = bad["nan-weights"][0].parent / "good"
    r = post(env, "/admin/adapters", {"name": "acme-good", "path": str(good)}, key=ADMIN)
    assert r.status_code == 201, r.text
