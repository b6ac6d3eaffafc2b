"""core/api_keys.py: roles, and key files written before roles existed."""

from __future__ import annotations

import json

import pytest

from llamalab import ConfigError, KeyRing


def test_a_key_file_from_before_roles_reads_as_user_keys(tmp_path):
    ring = KeyRing(tmp_path / "keys.json")
    key = ring.add("alice")
    data = json.loads(ring.path.read_text())
    for entry in data["keys"]:
        entry.pop("role")  # as the first version wrote it
    ring.path.write_text(json.dumps(data))
    found = KeyRing(ring.path).check(key)
    assert found is not None and found.role == "user" and found.may_generate and not found.may_read_metrics


@pytest.mark.parametrize("role, generate, metrics", [("user", True, False), ("metrics", False, True),
                                                     ("admin", True, True)])
def test_each_role_opens_what_it_says(tmp_path, role, generate, metrics):
    ring = KeyRing(tmp_path / "keys.json")
    key = ring.check(ring.add("k", role=role))
    assert (key.role, key.may_generate, key.may_read_metrics) == (role, generate, metrics)
    assert oct(ring.path.stat().st_mode & 0o777) == "0o600"


def test_an_unknown_role_is_refused_when_made_and_when_read(tmp_path):
    ring = KeyRing(tmp_path / "keys.json")
    with pytest.raises(ConfigError, match="unknown key role 'root'; choose one of: user, metrics, admin"):
        ring.add("x", role="root")
    ring.add("alice")
    data = json.loads(ring.path.read_text())
    data["keys"][0]["role"] = "root"
    ring.path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="damaged .*unknown role 'root'"):
        KeyRing(ring.path).keys()
