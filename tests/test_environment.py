"""environment(): variables set and unset for a block, every one restored after it, also when the block raises."""

from __future__ import annotations

import os

import pytest

from clp_tune.environment import environment


def test_variables_are_set_and_unset_for_the_block_and_restored_after_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLP_TEST_KEPT", "before")
    monkeypatch.setenv("CLP_TEST_UNSET", "there")
    monkeypatch.delenv("CLP_TEST_NEW", raising=False)
    with environment(CLP_TEST_KEPT="inside", CLP_TEST_UNSET=None, CLP_TEST_NEW="new"):
        assert os.environ["CLP_TEST_KEPT"] == "inside"
        assert "CLP_TEST_UNSET" not in os.environ
        assert os.environ["CLP_TEST_NEW"] == "new"
    assert os.environ["CLP_TEST_KEPT"] == "before"
    assert os.environ["CLP_TEST_UNSET"] == "there"
    assert "CLP_TEST_NEW" not in os.environ


def test_variables_are_restored_when_the_block_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLP_TEST_KEPT", "before")
    monkeypatch.delenv("CLP_TEST_NEW", raising=False)
    with pytest.raises(RuntimeError, match="inside"), environment(CLP_TEST_KEPT=None, CLP_TEST_NEW="new"):
        raise RuntimeError("inside")
    assert os.environ["CLP_TEST_KEPT"] == "before"
    assert "CLP_TEST_NEW" not in os.environ
