"""How TuneSettings become Tune's searcher and scheduler (no trials run here: tests/test_tune_resume.py and
the session's end-to-end run do that)."""

import json
import os
from types import SimpleNamespace

import pytest
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from raymotion.config import ConfigError, TuneSettings
from raymotion.tune.experiment import SnapshotCountedSearch, search_algorithm, trial_scheduler
from raymotion.tune.spaces import SearchSpace, load_search_space


def test_each_search_and_scheduler_setting_selects_its_tune_class():
    space = load_search_space("lenet")
    optuna = search_algorithm(TuneSettings(search="optuna", max_concurrent_trials=3), space)
    assert isinstance(optuna, SnapshotCountedSearch) and isinstance(optuna.searcher, ConcurrencyLimiter)
    assert optuna.searcher.max_concurrent == 3 and isinstance(optuna.searcher.searcher, OptunaSearch)
    assert isinstance(search_algorithm(TuneSettings(search="random"), space), BasicVariantGenerator)
    assert isinstance(trial_scheduler(TuneSettings(scheduler="fifo"), 5), FIFOScheduler)
    assert isinstance(trial_scheduler(TuneSettings(scheduler="asha"), 5), ASHAScheduler)
    with pytest.raises(ConfigError, match="search"):
        TuneSettings(search="grid")


def test_asha_stops_trials_by_the_settings_grace_period_reduction_factor_and_epochs():
    """Results fed to the scheduler as Tune's loop does (no trials run): what it stops shows the settings
    arrived. On the reported epoch: Tune's own iteration count restarts when a trial continues after a fault."""
    asha = trial_scheduler(TuneSettings(scheduler="asha", grace_period=2, reduction_factor=3), 5)
    asha.set_search_properties("val_source_macro_f1", "max")
    trials = {name: SimpleNamespace(trial_id=name) for name in "abcde"}
    for trial in trials.values():
        asha.on_trial_add(None, trial)

    def report(name: str, epoch: int, f1: float) -> str:
        return asha.on_trial_result(None, trials[name], {"epoch": epoch, "val_source_macro_f1": f1})

    for epoch in (1, 2):
        for name, f1 in zip("abc", (0.9, 0.5, 0.1)):
            report(name, epoch, f1)
    # Grace period 2: epoch 1 is never judged (with 1, the worst so far would stop here).
    assert report("d", 1, 0.0) == TrialScheduler.CONTINUE
    # The rung at epoch 2 keeps the top third: 0.55 is below the 2/3 quantile of 0.1, 0.5, 0.9 (0.63);
    # with the default reduction factor 2 the cut is the median, 0.5, and d would go on.
    assert report("d", 2, 0.55) == TrialScheduler.STOP
    # No rung at 4 (the next is 6); the run's 5 epochs are the end.
    assert [report("e", 2, 0.7), report("e", 4, 0.7), report("e", 5, 0.7)] == [
        TrialScheduler.CONTINUE, TrialScheduler.CONTINUE, TrialScheduler.STOP]


def test_a_space_with_every_key_pinned_runs_the_base_config_not_optuna():
    """OptunaSearch cannot suggest from an empty space (a RuntimeError: "no search space has been defined");
    with every searched key pinned (by a preset or --set) the trials are
    the base config, through Tune's generator."""
    space = SearchSpace({}, [])
    generator = search_algorithm(TuneSettings(search="optuna", max_concurrent_trials=1), space)
    assert isinstance(generator, BasicVariantGenerator) and generator.max_concurrent == 1


def test_random_search_runs_no_more_trials_at_once_than_the_settings_allow(tmp_path):
    """Tune applies max_concurrent_trials to a Searcher only: a generator passed in runs every trial at
    once unless it is told itself (on 2 CPUs that was ten Train controllers waiting for one CPU each)."""
    space = load_search_space("lenet")
    for settings in (TuneSettings(search="random", max_concurrent_trials=2), TuneSettings(search="optuna"),
                     TuneSettings(search="random", max_concurrent_trials=1)):
        generator = search_algorithm(settings, space if settings.search == "random" else SearchSpace({}, []))
        # Tune's own loop, without Ray: trials are asked for until the generator holds back.
        generator.add_configurations([tune.Experiment("t", lambda config: None, config=space.param_space,
                                                      num_samples=5, storage_path=str(tmp_path))])
        handed = [generator.next_trial() for _ in range(4)]
        running = [trial for trial in handed if trial is not None]
        assert len(running) == settings.max_concurrent_trials and handed[len(running):] == [None] * (4 - len(running))
        if settings.search == "random":  # its first trial is the space's start point
            assert running[0].config == space.start[0]
        # A trial that ends frees its place, and only one.
        generator.on_trial_complete(running[0].trial_id)
        assert generator.next_trial() is not None and generator.next_trial() is None


def test_a_restored_search_counts_every_trial_of_the_snapshot(tmp_path):
    """A driver killed while Tune copied its snapshot: the trials file holds 2 trials, the search state file
    (written beside it, copied on its own) still counts 1. The restored search must count 2, or the resumed
    run suggests a third trial of num_samples=2 (what CI saw)."""
    settings, space = TuneSettings(search="optuna", num_samples=2), load_search_space("lenet")
    session = "2026-01-01_00-00-00"
    killed = search_algorithm(settings, space)
    killed.set_search_properties(settings.metric, settings.mode, space.param_space)
    killed.set_state({**killed.get_state(), "counter": 1, "total_samples": 2})
    killed.save_to_dir(str(tmp_path), session)
    with open(os.path.join(tmp_path, f"experiment_state-{session}.json"), "w") as f:
        json.dump({"trial_data": [["{}", "{}"], ["{}", "{}"]]}, f)

    restored = search_algorithm(settings, space)
    restored.restore_from_dir(str(tmp_path))
    assert restored.get_state()["counter"] == 2 and restored.is_finished()
