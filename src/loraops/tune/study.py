"""`tune(config)`: a small, time-boxed recipe search, one training run per trial.

Optuna draws the recipes (TPE after a few random ones) and prunes by successive halving: every
`rung_steps` steps a trial is scored (`score.Scorer`: domain metric and forgetting on the val set,
the base's side measured once) and reported; a trial whose score falls outside the best 1/η of
the trials that reached the same step stops there. A finished trial's adapter is pushed to the
registry as the next version of `name`, with its recipe (the training hyperparameters) and its
tune scores in the version's metrics.

Resumable: the study lives in OUT/study.db (Optuna's SQLite storage) and each trial's run in
OUT/trials/NNNN/ with a checkpoint at every rung. Running the same command again continues: a
trial cut short (Ctrl-C, a crash, a kill) is run again with the same recipe from its last
checkpoint, and only the trials still missing are started. One process at a time per OUT.
"""

from __future__ import annotations

import fcntl
import json
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

from loraops.errors import ConfigError, LoraOpsError
from loraops.tune.score import Baseline, Scorer, TrialScores
from loraops.tune.space import Recipe, SearchSpace

STUDY_NAME = "loraops-tune"


@dataclass(frozen=True)
class TuneConfig:
    """`trials` counts finished trials (complete, pruned or failed) over every run of the study;
    `timeout_minutes` bounds this invocation (no trial starts after it; the running one finishes).
    `rung_steps` (default: a third of the smallest step count) is how often trials are scored."""

    base: str
    data: str
    out: str
    name: str  # registry adapter name for the versions the study creates
    tenant: str | None = None
    space: SearchSpace = field(default_factory=SearchSpace)
    trials: int = 12
    timeout_minutes: float | None = None
    rung_steps: int | None = None
    reduction_factor: int = 3
    batch_size: int = 2
    seq_len: int = 512
    eval_examples: int = 48
    max_forgetting: float = 0.10  # the promotion gate's bound
    general_passages: int = 16
    questions_per_kind: int = 10
    seed: int = 0
    first: tuple[Recipe, ...] = ()  # recipes tried before any drawn one (e.g. the one in use today)
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("trials", "reduction_factor", "batch_size", "seq_len", "eval_examples", "general_passages",
                     "questions_per_kind"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if self.reduction_factor < 2:
            raise ConfigError("reduction-factor must be >= 2")
        if self.rung_steps is not None and self.rung_steps < 1:
            raise ConfigError(f"rung-steps must be a positive integer, got {self.rung_steps!r}")
        if self.timeout_minutes is not None and self.timeout_minutes <= 0:
            raise ConfigError(f"timeout must be positive, got {self.timeout_minutes!r}")
        if self.max_forgetting < 0:
            raise ConfigError(f"max-forgetting must be >= 0, got {self.max_forgetting!r}")
        for recipe in self.first:
            self.space.check(recipe)

    @property
    def rung(self) -> int:
        return self.rung_steps or max(1, self.space.steps[0] // 3)

    def study_settings(self) -> dict:
        """What a trial's score depends on: a study resumed with other settings is refused."""
        keep = ("base", "data", "space", "rung", "reduction_factor", "batch_size", "seq_len", "eval_examples",
                "max_forgetting", "general_passages", "questions_per_kind", "seed")
        d = asdict(self)
        d["space"], d["rung"] = self.space.to_dict(), self.rung
        return {k: d[k] for k in keep}


@dataclass
class TrialRow:
    """One line of the progress table."""

    number: int
    params: dict
    state: str  # running | pruned | complete | failed
    step: int | None = None  # the last scored step
    scores: TrialScores | None = None
    version: int | None = None
    seconds: float | None = None


@dataclass
class TuneResult:
    rows: list[TrialRow]
    best: TrialRow | None
    baseline: Baseline


@contextmanager
def _exclusive(out: Path) -> Iterator[None]:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"another `loraops tune` is running on {out}") from None
        yield


def tune(cfg: TuneConfig) -> TuneResult:
    try:
        import optuna
    except ImportError:
        raise ConfigError("loraops tune needs Optuna: pip install 'loraops[tune]'") from None
    from rich.console import Console

    from loraops.evals.domain import auto_max_new_tokens, load_examples
    from loraops.evals.general import corpus_passages, general_questions
    from loraops.models import load_base
    from loraops.registry import Registry
    from loraops.train.batches import Dataset, load_dataset
    from loraops.tune.table import trials_table

    console = Console(stderr=True)
    out = Path(cfg.out)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with _exclusive(out):
        data = load_dataset(cfg.data)
        if not data.val:
            raise ConfigError(f"{cfg.data} has no validation examples to score trials on (curate it into a "
                              "directory with val.jsonl, or pass a .jsonl file)")
        study = optuna.create_study(
            study_name=STUDY_NAME, storage=f"sqlite:///{out / 'study.db'}", load_if_exists=True, direction="maximize",
            pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=cfg.rung,
                                                          reduction_factor=cfg.reduction_factor))
        # Seeded by the trials so far: a resumed study draws new recipes, not the first run's again.
        study.sampler = optuna.samplers.TPESampler(seed=cfg.seed + len(study.trials),
                                                   n_startup_trials=max(3, cfg.trials // 3))
        _same_settings(study, cfg)
        for recipe in cfg.first:
            study.enqueue_trial(recipe.to_dict(), skip_if_exists=True)
        base = load_base(cfg.base)
        examples = load_examples(cfg.data, base.tokenizer, cfg.eval_examples)
        scorer = Scorer(base.tokenizer, examples, corpus_passages(cfg.general_passages),
                        general_questions(cfg.questions_per_kind), auto_max_new_tokens(examples, base.tokenizer),
                        cfg.max_forgetting)
        if "baseline" not in study.user_attrs:
            console.print("measuring the base model once (domain metric, perplexity, questions)")
            study.set_user_attr("baseline", scorer.baseline(base.model).to_dict())
        baseline = Baseline.from_dict(study.user_attrs["baseline"])
        _requeue_interrupted(study)
        remaining = cfg.trials - sum(_counts(t, _superseded(study)) for t in study.trials)
        train_data = Dataset(data.train, [], data.digest)  # trials are scored by the Scorer, not val loss

        def show() -> None:
            console.print(trials_table(_rows(study), baseline, cfg.max_forgetting))

        with Registry() as registry:
            registry.register_base(base.info.fingerprint, base.info.name)
            objective = _Objective(cfg, base, train_data, scorer, baseline, registry)
            if remaining > 0:
                study.optimize(objective, n_trials=remaining, catch=(LoraOpsError, RuntimeError),
                               timeout=cfg.timeout_minutes * 60 if cfg.timeout_minutes else None,
                               callbacks=[lambda *_: show()])  # after each trial, its state set
        rows = _rows(study)
        done = [r for r in rows if r.state == "complete" and r.scores is not None]
        best = max(done, key=lambda r: r.scores.score) if done else None
        return TuneResult(rows, best, baseline)


class _Objective:
    """One trial: train the drawn recipe, scoring (and maybe pruning) at every rung; then score the
    final adapter, push it to the registry and return its score."""

    def __init__(self, cfg: TuneConfig, base, data, scorer: Scorer, baseline: Baseline, registry) -> None:
        self.cfg, self.base, self.data, self.scorer, self.baseline = cfg, base, data, scorer, baseline
        self.registry = registry

    def __call__(self, trial) -> float:
        import optuna

        from loraops.lora import remove
        from loraops.train import train
        from loraops.train.checkpoint import list_checkpoints

        cfg = self.cfg
        recipe = cfg.space.suggest(trial)
        run_dir = Path(trial.user_attrs.get("run_dir") or Path(cfg.out) / "trials" / f"{trial.number:04d}")
        trial.set_user_attr("run_dir", str(run_dir))
        reported = {int(k): v for k, v in (trial.user_attrs.get("reported") or {}).items()}
        for step, value in sorted(reported.items()):  # an interrupted attempt's rungs count for this one
            trial.report(value, step)
        if reported and trial.should_prune():
            raise optuna.TrialPruned("pruned at the rung its interrupted attempt reached")
        rungs = _rung_steps(cfg.rung, cfg.reduction_factor, recipe.steps)
        resume = bool(list_checkpoints(run_dir))
        train_cfg = recipe.train_config(cfg.base, cfg.data, str(run_dir), len(self.data.train),
                                        batch_size=cfg.batch_size, seq_len=cfg.seq_len, eval_every=cfg.rung,
                                        seed=cfg.seed, resume=resume, progress=cfg.progress)
        t0 = time.monotonic()

        def on_eval(step: int, _val_loss) -> None:
            if step not in rungs or step in reported:
                return
            scores = self.scorer(self.base.model, self.baseline)
            reported[step] = scores.score
            trial.report(scores.score, step)
            trial.set_user_attr("reported", {str(k): v for k, v in reported.items()})
            trial.set_user_attr("scores", scores.to_dict())
            trial.set_user_attr("step", step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"score {scores.score:.3f} at step {step}")

        try:
            result = train(self.base, self.data, train_cfg, on_eval=on_eval)
            scores = self.scorer(self.base.model, self.baseline)
        except optuna.TrialPruned:
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
            trial.set_user_attr("seconds", round(time.monotonic() - t0, 1))
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            raise
        finally:
            remove(self.base.model)  # the next trial starts from the bare base
        trial.set_user_attr("scores", scores.to_dict())
        trial.set_user_attr("step", recipe.steps)
        trial.set_user_attr("seconds", round(time.monotonic() - t0, 1))
        version = self._push(result.adapter_dir, trial.number, recipe.to_dict(), scores)
        trial.set_user_attr("version", version)
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        return scores.score

    def _push(self, adapter_dir: Path, number: int, recipe: dict, scores: TrialScores) -> int:
        """Record the tune results in the adapter's metadata (so they travel with it), then push."""
        from loraops.lora import read_adapter, save_adapter

        adapter = read_adapter(adapter_dir)
        adapter.meta.setdefault("metrics", {})["tune"] = {
            "study": str(Path(self.cfg.out).resolve()), "trial": number, "recipe": recipe, **scores.to_dict(),
            "baseline": self.baseline.to_dict(), "max_forgetting": self.cfg.max_forgetting}
        save_adapter(adapter, adapter_dir)
        return self.registry.push(adapter_dir, self.cfg.name, tenant=self.cfg.tenant, created_by="loraops tune").version


def _rung_steps(first: int, factor: int, steps: int) -> set[int]:
    """The steps where successive halving compares trials: first, first·η, first·η², ... below `steps`."""
    rungs, step = set(), first
    while step < steps:
        rungs.add(step)
        step *= factor
    return rungs


def _same_settings(study, cfg: TuneConfig) -> None:
    settings = json.loads(json.dumps(cfg.study_settings()))  # as stored: lists, not tuples
    stored = study.user_attrs.get("settings")
    if stored is None:
        study.set_user_attr("settings", settings)
    elif stored != settings:
        changed = sorted(k for k in settings if stored.get(k) != settings[k])
        raise ConfigError(f"{cfg.out} holds a study with other settings ({', '.join(changed)}); "
                          "run it with the same options to continue it, or choose another --out")


def _superseded(study) -> set[int]:
    """Numbers of the interrupted trials that were enqueued again (the retry stands for them)."""
    return {t.user_attrs["retry_of"] for t in study.trials if "retry_of" in t.user_attrs}


def _counts(trial, superseded: set[int]) -> bool:
    """Finished trials count against --trials; one cut short by an interruption does not (it runs again)."""
    from optuna.trial import TrialState

    if trial.state == TrialState.FAIL:
        return not trial.user_attrs.get("interrupted") and trial.number not in superseded
    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED)


def _requeue_interrupted(study) -> None:
    """Trials left RUNNING (the process was killed; only one process works on a study at a time) or
    failed by an interrupt are enqueued again with their recipe, run directory and the rungs they
    reported, so the retry resumes from the run's last checkpoint."""
    from optuna.trial import TrialState

    superseded = _superseded(study)
    for t in study.trials:
        interrupted = t.state == TrialState.RUNNING or (t.state == TrialState.FAIL and t.user_attrs.get("interrupted"))
        if not interrupted or t.number in superseded:
            continue
        if t.state == TrialState.RUNNING:
            study.tell(t.number, state=TrialState.FAIL)
        attrs = {k: v for k, v in t.user_attrs.items() if k in ("run_dir", "reported")}
        study.enqueue_trial(t.params, user_attrs={**attrs, "retry_of": t.number})


def _rows(study) -> list[TrialRow]:
    from optuna.trial import TrialState

    names = {TrialState.RUNNING: "running", TrialState.PRUNED: "pruned", TrialState.COMPLETE: "complete",
             TrialState.FAIL: "failed", TrialState.WAITING: "waiting"}
    rows = []
    superseded = _superseded(study)
    for t in study.trials:
        if t.number in superseded:
            continue  # shown once, as its retry
        scores = t.user_attrs.get("scores")
        rows.append(TrialRow(t.number, dict(t.params), names[t.state], t.user_attrs.get("step"),
                             TrialScores(**scores) if scores else None, t.user_attrs.get("version"),
                             t.user_attrs.get("seconds")))
    return rows

