"""The time-left estimate and the epoch lines of a tune (raymotion.tune.progress), from given epochs."""

from types import SimpleNamespace

import pytest

from raymotion.tune.progress import EpochProgress, ModelPlan, RunClock

# a: 2 trials x 3 epochs; b: 1 trial x 2 epochs, with 4x a's FLOPs per image and the same images.
PLANS = {"a": ModelPlan("a", trials=2, epochs=3, train_images=100, val_images=50, flops_per_image=10**6),
         "b": ModelPlan("b", trials=1, epochs=2, train_images=100, val_images=50, flops_per_image=4 * 10**6)}


def test_no_estimate_before_the_first_epoch():
    clock = RunClock(dict(PLANS))
    assert clock.seconds_left() is None and "known after the first full epoch" in clock.status()


def test_estimate_uses_a_models_own_epochs_and_predicts_the_others_by_flops():
    clock = RunClock(dict(PLANS))
    clock.trial("a", "t1")
    clock.observe_epoch("a", "t1", 1, seconds=10.0)
    assert clock.seconds_per_epoch("a") == (10.0, 10.0)
    # b does 4x a's work per epoch, at a's compute rate (the only one seen): 40 s an epoch.
    assert clock.seconds_per_epoch("b") == pytest.approx((40.0, 40.0))
    assert clock.remaining_epochs("a") == (2 + 3, 1) and clock.remaining_epochs("b") == (2, 1)
    overhead = clock.start_overheads[0]
    left = 5 * 10.0 + 1 * overhead + 2 * 40.0 + 1 * overhead
    assert clock.seconds_left() == pytest.approx((left, left))


def test_head_only_epochs_count_as_done_but_give_no_rate():
    # A pretrained model's head-only epoch is much faster than a full one: taken as a full epoch, it would
    # make the model's own epochs and every prediction from its FLOPs rate far too short.
    clock = RunClock(dict(PLANS))
    clock.observe_epoch("a", "t1", 1, seconds=1.0, head_only=True)
    assert clock.remaining_epochs("a") == (2 + 3, 1)
    assert clock.seconds_per_epoch("a") is None and clock.seconds_left() is None
    clock.observe_epoch("a", "t1", 2, seconds=10.0)
    assert clock.seconds_per_epoch("a") == (10.0, 10.0) and clock.seconds_per_epoch("b") == pytest.approx((40.0, 40.0))


def test_epoch_lines_pass_the_head_only_flag_to_the_clock():
    clock = RunClock(dict(PLANS))
    progress = EpochProgress("a", clock, "val_macro_f1", "max", emit=lambda line: None)
    trial = SimpleNamespace(trial_id="t1")
    progress.on_trial_start(0, [], trial)
    progress.on_trial_result(0, [], trial, {"epoch": 1, "epoch_seconds": 1.0, "head_only": 1.0})
    progress.on_trial_result(0, [], trial, {"epoch": 2, "epoch_seconds": 10.0, "head_only": 0.0})
    assert clock.epoch_seconds["a"] == [10.0] and clock.trial("a", "t1").epochs_done == 2


def test_an_unseen_model_is_predicted_between_the_fastest_and_slowest_compute_rates():
    # a runs 350 units of work in 10 s, b 1400 in 20 s (twice a's rate): an unseen model e of b's work per
    # epoch takes 20 s at b's rate and 40 s at a's. Once e has run, its own time is both ends.
    plans = dict(PLANS, e=ModelPlan("e", trials=1, epochs=2, train_images=100, val_images=50,
                                    flops_per_image=4 * 10**6))
    clock = RunClock(plans)
    clock.observe_epoch("a", "t1", 1, seconds=10.0)
    clock.observe_epoch("b", "t2", 1, seconds=20.0)
    assert clock.seconds_per_epoch("e") == pytest.approx((20.0, 40.0))
    low, high = clock.seconds_left()
    assert high - low == pytest.approx(2 * (40.0 - 20.0))  # e's two epochs are the only unknown
    assert f"~{low / 60:.1f}-{high / 60:.1f} min left (+ export)" in clock.status()
    clock.observe_epoch("e", "t3", 1, seconds=30.0)
    assert clock.seconds_per_epoch("e") == (30.0, 30.0)
    low, high = clock.seconds_left()
    assert low == high and " left (+ export)" in clock.status() and "-" not in clock.status().split(",")[1]


def test_a_trial_stopped_early_drops_its_unrun_epochs():
    clock = RunClock(dict(PLANS))
    clock.observe_epoch("a", "t1", 1, seconds=10.0)
    before = clock.remaining_epochs("a")[0]
    clock.finish_trial("a", "t1")  # stopped after 1 of 3 epochs
    assert clock.remaining_epochs("a")[0] == before - 2


def test_a_data_bound_model_bounds_the_prediction_from_below():
    # c: a tenth of a's FLOPs, but images still take time to load: not faster than a per image.
    plans = dict(PLANS, c=ModelPlan("c", trials=1, epochs=1, train_images=100, val_images=50, flops_per_image=10**5))
    clock = RunClock(plans)
    clock.observe_epoch("a", "t1", 1, seconds=10.0)
    assert clock.seconds_per_epoch("c") == pytest.approx((10.0, 10.0))


def test_an_online_student_is_planned_with_its_teachers_passes():
    # d: a's own FLOPs, and online teachers of 2x a's FLOPs per training image (forward only): its epochs do
    # a's 350 units of work plus 200, at a's compute rate.
    online = ModelPlan("d", trials=1, epochs=1, train_images=100, val_images=50, flops_per_image=10**6,
                       teacher_flops_per_image=2 * 10**6)
    clock = RunClock(dict(PLANS, d=online))
    clock.observe_epoch("a", "t1", 1, seconds=10.0)
    assert clock.seconds_per_epoch("d") == pytest.approx((10.0 * (350 + 200) / 350,) * 2)


def test_the_tune_command_plans_each_online_students_teachers():
    from raymotion.config import TrainConfig
    from raymotion.models import count_flops, create_model
    from raymotion.tune.__main__ import plan_model

    teacher = TrainConfig(model="mobilenet_v2", input_size=64)
    student = plan_model(TrainConfig(model="lenet", input_size=64), 1, 320, 64, teachers=[teacher, teacher])
    assert student.teacher_flops_per_image == 2 * count_flops(create_model("mobilenet_v2", pretrained=False), 64)
    assert plan_model(TrainConfig(model="lenet", input_size=64), 1, 320, 64).teacher_flops_per_image == 0


def test_epoch_lines_name_model_trial_epoch_phase_and_best():
    lines = []
    clock = RunClock(dict(PLANS))
    progress = EpochProgress("a", clock, "val_macro_f1", "max", emit=lines.append)
    t1, t2 = SimpleNamespace(trial_id="t1"), SimpleNamespace(trial_id="t2")
    progress.on_trial_start(0, [], t1)
    for epoch, f1 in ((1, 0.5), (2, 0.7)):
        progress.on_trial_result(0, [], t1, {"epoch": epoch, "epoch_seconds": 10.0, "head_only": float(epoch == 1),
                                             "train_images_per_s": 123.4, "val_accuracy": 0.6, "val_macro_f1": f1})
    progress.on_trial_complete(0, [], t1)
    progress.on_trial_start(0, [], t2)
    progress.on_trial_result(0, [], t2, {"epoch": 1, "epoch_seconds": 10.0, "train_images_per_s": 99.0,
                                         "val_accuracy": 0.5, "val_macro_f1": 0.6})
    progress.on_trial_error(0, [], t2)
    assert lines[0].startswith("[a] trial 1/2 epoch 1/3 head: 123 img/s, val acc 0.6000 macro-F1 0.5000; "
                               "best val_macro_f1 0.5000 (trial 1, epoch 1) | ")
    assert lines[1].startswith("[a] trial 1/2 epoch 2/3 full:") and "best val_macro_f1 0.7000 (trial 1, epoch 2)" in lines[1]
    assert lines[2] == "[a] trial 1/2 done after 2/3 epochs (stopped early)"
    assert "best val_macro_f1 0.7000 (trial 1, epoch 2)" in lines[3]  # trial 2's 0.6 is no better
    assert lines[4].startswith("[a] trial 2/2 FAILED after 1 epochs")
    assert all("elapsed" in line for line in lines[:2] + lines[3:4])
