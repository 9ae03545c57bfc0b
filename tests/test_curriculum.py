"""SOFT's curriculum schedulers and the curriculum that owns lambda (SOFT.md section 6, step 4)."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest

from softrec.training.curriculum import Curriculum, Scheduler, adaptive_lambda


def test_first_epoch_is_self_distilled_only():
    # d_0 is the untuned model's distance, so lambda_1 = exp(alpha * 0) = 1 for every alpha.
    for alpha in (100, 10, 1, 0.1):
        assert Scheduler("adaptive", alpha=alpha)(1, {0: 3.7}) == 1.0


def test_reference_formula_exactly():
    assert adaptive_lambda(4.0, 3.0, 1.0) == pytest.approx(math.exp(-0.25))
    assert adaptive_lambda(4.0, 2.0, 10.0) == pytest.approx(math.exp(-5.0))
    assert Scheduler("adaptive", alpha=0.1)(3, {0: 2.0, 1: 1.9, 2: 1.0}) == pytest.approx(math.exp(0.1 * (0.5 - 1)))


def test_clipped_at_one_when_distance_rises():
    assert adaptive_lambda(2.0, 2.5, 1.0) == 1.0
    assert adaptive_lambda(2.0, 2.0, 100.0) == 1.0


def test_monotone_in_distance_and_alpha():
    values = [adaptive_lambda(5.0, d, 1.0) for d in (5.0, 4.0, 3.0, 2.0, 1.0, 0.0)]
    assert values == sorted(values, reverse=True)
    assert adaptive_lambda(5.0, 4.0, 10.0) < adaptive_lambda(5.0, 4.0, 1.0) < adaptive_lambda(5.0, 4.0, 0.1)


def test_other_schedulers():
    assert Scheduler("sd-only")(5, {}) == 1.0
    assert Scheduler("fixed", fixed_lambda=0.3)(2, {}) == 0.3
    linear = Scheduler("linear", total_epochs=5)
    assert [linear(t, {}) for t in range(1, 6)] == [1.0, 0.75, 0.5, 0.25, 0.0]
    with pytest.raises(ValueError):
        Scheduler("nope")(1, {})


class _Model:
    training = True

    def eval(self):
        self.training = False

    def train(self, mode=True):
        self.training = mode


def test_curriculum_drives_lambda_and_survives_resume(tmp_path):
    measured = iter([4.0, 3.0, 2.0, 99.0])
    curriculum = Curriculum(Scheduler("adaptive", alpha=1.0), lambda m, t: next(measured), tmp_path / "c.json")
    model = _Model()
    assert curriculum.lam == 1.0  # lambda_1 before anything ran
    curriculum.on_train_begin(None, SimpleNamespace(epoch=0.0, global_step=0), None, model=model)
    curriculum.on_epoch_begin(None, SimpleNamespace(epoch=0.0), None)
    assert curriculum.lam == 1.0
    curriculum.on_epoch_end(None, SimpleNamespace(epoch=1.0), None, model=model)
    assert curriculum.record(1) == {"lambda": 1.0, "distance": 3.0}
    assert model.training  # restored after measuring

    # a new process resuming mid-epoch 2 (state.epoch = 1.5) keeps the distance history
    resumed = Curriculum(Scheduler("adaptive", alpha=1.0), lambda m, t: 2.0, tmp_path / "c.json")
    resumed.on_train_begin(None, SimpleNamespace(epoch=1.5, global_step=3), None, model=model)  # d_0 not re-measured
    resumed.on_epoch_begin(None, SimpleNamespace(epoch=1.5), None)
    assert resumed.distances == {0: 4.0, 1: 3.0}
    assert resumed.lam == pytest.approx(math.exp(3.0 / 4.0 - 1.0))


def test_fresh_run_ignores_an_earlier_attempts_state(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"distances": {"0": 9.0, "1": 1.0}, "lambdas": {"1": 1.0}}')
    callback = Curriculum(Scheduler("adaptive", alpha=1.0), lambda m, t: 5.0, path)
    callback.on_train_begin(None, SimpleNamespace(epoch=0.0, global_step=0), None, model=_Model())
    assert callback.distances == {0: 5.0}


def test_a_resumed_run_keeps_saying_where_its_reused_d0_came_from(tmp_path):
    def measure(model, tokenizer):
        return 2.0

    def untuned(model, tokenizer):
        return 4.0

    untuned.reused_from = "/cache/probe-d0/key.json"
    measure.untuned = untuned
    first = Curriculum(Scheduler("adaptive", alpha=1.0), measure, tmp_path / "c.json")
    first.on_train_begin(None, SimpleNamespace(epoch=0.0, global_step=0), None, model=_Model())
    assert first.distances == {0: 4.0}  # d_0 through the cache-aware measure
    assert json.loads((tmp_path / "c.json").read_text())["d0_reused_from"] == "/cache/probe-d0/key.json"

    def plain(model, tokenizer):
        return 2.0

    plain.untuned = lambda model, tokenizer: pytest.fail("d_0 measured again on resume")
    resumed = Curriculum(Scheduler("adaptive", alpha=1.0), plain, tmp_path / "c.json")
    resumed.on_train_begin(None, SimpleNamespace(epoch=1.5, global_step=3), None, model=_Model())
    resumed.on_epoch_end(None, SimpleNamespace(epoch=2.0), None, model=_Model())
    assert json.loads((tmp_path / "c.json").read_text())["d0_reused_from"] == "/cache/probe-d0/key.json"
