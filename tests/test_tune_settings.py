"""How TuneSettings become Tune's searcher and scheduler (no trials run here: tests/test_tune_resume.py and
the session's end-to-end run do that)."""

import pytest
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import BasicVariantGenerator
from ray.tune.search.optuna import OptunaSearch

from raymotion.config import ConfigError, TuneSettings
from raymotion.tune.experiment import search_algorithm, trial_scheduler
from raymotion.tune.spaces import load_search_space


def test_each_search_and_scheduler_setting_selects_its_tune_class():
    space = load_search_space("lenet")
    assert isinstance(search_algorithm(TuneSettings(search="optuna"), space), OptunaSearch)
    assert isinstance(search_algorithm(TuneSettings(search="random"), space), BasicVariantGenerator)
    assert isinstance(trial_scheduler(TuneSettings(scheduler="fifo"), 5), FIFOScheduler)
    asha = trial_scheduler(TuneSettings(scheduler="asha", grace_period=2, reduction_factor=3), 5)
    # On the reported epoch: Tune's own iteration count restarts when a trial continues after a fault.
    assert isinstance(asha, ASHAScheduler) and asha._time_attr == "epoch" and asha._max_t == 5
    with pytest.raises(ConfigError, match="search"):
        TuneSettings(search="grid")


def test_random_search_runs_no_more_trials_at_once_than_the_settings_allow():
    """Tune applies max_concurrent_trials to a Searcher only: a generator passed in runs every trial at
    once unless it is told itself (on 2 CPUs that was ten Train controllers waiting for one CPU each)."""
    generator = search_algorithm(TuneSettings(search="random", max_concurrent_trials=1), load_search_space("lenet"))
    assert generator.max_concurrent == 1
