"""The Model tab's decoder budget (issue 24): every tab runs the chosen depth and queries."""

from __future__ import annotations

import gradio as gr
import pytest
import torch

from app.state import SharedInputs
from app.tabs import model as model_tab
from tests.app_util import SYNTH_EXAMPLE, app_state


@pytest.fixture()
def state(tmp_path):
    return app_state(tmp_path)


def test_budget_reaches_the_trace_and_the_detections(state):
    key = state.store.default.key
    inputs = SharedInputs(str(SYNTH_EXAMPLE), 0.3, 320, key, 100)
    full = state.select(inputs).result
    assert full.trace.num_layers == 3
    text = model_tab.set_budget(state, key, 1, 300)
    assert "1 decoder layer(s) on the top 300 queries" in text
    assert state.store.budget(key) == (1, 300)
    one = state.select(inputs)  # a new forward pass (the budget is part of the cache key)
    assert not one.cached and one.result.trace.num_layers == 1
    assert torch.equal(one.result.trace.boxes[0], full.trace.boxes[0])
    depth, queries, note = model_tab.budget_controls(state, key)
    assert (depth["maximum"], depth["value"], queries["value"]) == (3, 1, 300)
    assert "1 of 3 decoder layers" in note
    model_tab.set_budget(state, key, 3, 300)  # the full budget again: no budget recorded
    assert state.store.budget(key) is None and state.select(inputs).cached
    assert state.store.get(key).model.decoder_layers == 3  # the shared model never changes


def test_bad_budget_is_a_user_error(state):
    with pytest.raises(gr.Error, match="decoder_layers must be"):
        model_tab.set_budget(state, state.store.default.key, 5, 300)


def test_evaluate_tab_measures_the_trade(state, monkeypatch):
    from app.tabs import evaluate as evaluate_tab

    monkeypatch.setattr(evaluate_tab, "SWEEP_IMAGES", 2)  # the structure, quickly
    text, table, fig = evaluate_tab.evaluate_budget(
        state, evaluate_tab.BUNDLED, None, None, progress=lambda *a, **k: None
    )
    assert "2 images" in text and "Pareto" in text
    assert list(table.columns) == evaluate_tab.BUDGET_COLUMNS
    assert [tuple(r) for r in table[["decoder_layers", "num_queries"]].values] == [
        (1, 100), (1, 300), (2, 100), (2, 300), (3, 100), (3, 300)
    ]  # fmt: skip
    assert "★" in set(table["pareto"]) and "Accuracy vs latency" in fig.layout.title.text
