"""Recipe search: `tune(TuneConfig) -> TuneResult` trains and scores LoRA recipes on a task.

space.py what is searched (rank, targets, lr, steps, replay) and the run a recipe makes;
score.py a trial's score (domain metric and forgetting, the base measured once); study.py the
Optuna study (TPE, successive halving, SQLite storage, registry versions); table.py the table.
"""

from loraops.tune.score import Baseline, TrialScores, objective
from loraops.tune.space import TARGET_SETS, Recipe, SearchSpace
from loraops.tune.study import TrialRow, TuneConfig, TuneResult, tune

__all__ = ["Baseline", "Recipe", "SearchSpace", "TARGET_SETS", "TrialRow", "TrialScores", "TuneConfig", "TuneResult",
           "objective", "tune"]
