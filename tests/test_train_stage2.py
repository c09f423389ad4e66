"""The stage-2 policy (best bookkeeping and the EMA search), on its own."""

from __future__ import annotations

import pytest

from dfine.train.stage2 import BestTracker, Decision, after_evaluation


def _run(aps, stop_epoch=2, decay=0.9999, search=True):
    best, decisions = BestTracker(), []
    for epoch, ap in enumerate(aps):
        decisions.append(after_evaluation(best, epoch, {"AP": ap}, stop_epoch, decay, search))
    return best, decisions


def test_stage_one_keeps_each_new_best_as_the_restart_point():
    best, d = _run([0.1, 0.3, 0.2], stop_epoch=5)
    assert [x.new_best for x in d] == [True, True, False]
    assert [x.save_stage1 for x in d] == [True, True, False]
    assert (best.top1, best.epoch, best.round_best) == (0.3, 1, 0.3)


def test_stage_two_without_gain_restarts_the_ema_with_a_lower_decay():
    best, d = _run([0.1, 0.3, 0.4, 0.35, 0.36], stop_epoch=2)
    assert d[2] == Decision(new_best=True)  # stage 2, gain: no stage-1 copy
    assert d[3].restart_from_stage1 and d[3].ema_decay == pytest.approx(0.9998)
    assert best.round_best == 0.36
    assert d[4] == Decision()  # a new round starts from its first evaluation
    assert (best.top1, best.epoch) == (0.4, 2)


def test_no_search_without_an_ema():
    _, d = _run([0.1, 0.3, 0.2], stop_epoch=1, decay=None)
    assert not any(x.restart_from_stage1 for x in d)
    _, d = _run([0.1, 0.3, 0.2], stop_epoch=1, search=False)
    assert not any(x.restart_from_stage1 for x in d)
