import math

import pytest

from kobjectives.runs import common


def test_round_history_spans_a_resume(tmp_path):
    # history.csv holds every round; fit's history only the rounds since the resume.
    (tmp_path / "history.csv").write_text(
        "epoch,step,loss,val_loss\n1,10,3.0,3.5\n2,20,2.0,2.5\n3,30,1.0,1.5\n"
    )
    history = common.round_history(tmp_path, {"loss": [1.0], "val_loss": [1.5]})
    assert history == {"loss": [3.0, 2.0, 1.0], "val_loss": [3.5, 2.5, 1.5]}


def test_round_history_without_a_log_is_fits_history(tmp_path):
    assert common.round_history(tmp_path, {"loss": [2.0, 1.0]}) == {"loss": [2.0, 1.0]}
    # Every round done before a resume: fit trains nothing and logs nothing.
    assert common.round_history(tmp_path, {}) == {}


def test_round_history_refuses_a_non_finite_last_loss(tmp_path):
    with pytest.raises(RuntimeError, match="non-finite loss"):
        common.round_history(tmp_path, {"loss": [1.0, math.nan]})
