"""How `loraops tune` scores a trial: the task's domain metric and forgetting, as `loraops eval`
measures them, with the base's side measured once per study instead of once per trial.

    score = domain − max(0, forgetting − max_forgetting)

A recipe inside the gate's forgetting bound is ranked by its domain metric alone; one outside it
loses what it forgets beyond the bound. The domain metric is the eval's primary one (JSON field
accuracy when every reference is a JSON object, else token F1) on the first `eval_examples`
validation examples; forgetting is the eval's score (relative perplexity increase on the general
corpus, relative accuracy lost on the general questions the base answers right). The KL term the
eval reports beside forgetting needs the base's logits next to the adapted ones, so it is left out.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch
from torch import nn

from loraops.evals.domain import Example
from loraops.evals.forgetting import forgetting_score
from loraops.evals.general import Question, answer_correct, token_log_probs
from loraops.evals.generate import encode_prompt, generate, left_pad, pad_id
from loraops.evals.metrics import DomainScores, score_domain


@dataclass(frozen=True)
class Baseline:
    """The base model's side of every comparison: the same for every trial of a study."""

    metric: str  # the primary domain metric's name
    domain: float
    ppl: float
    kept: tuple[int, ...]  # the general questions the base answers right (indices)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Baseline:
        return cls(d["metric"], d["domain"], d["ppl"], tuple(d["kept"]))


@dataclass(frozen=True)
class TrialScores:
    metric: str
    domain: float
    per_field: dict[str, float]
    exact_match: float
    hallucination_rate: float | None
    ppl: float
    qa_accuracy: float | None  # on the kept questions; None when the base answers none
    forgetting: float
    score: float

    def to_dict(self) -> dict:
        return asdict(self)


def objective(domain: float, forgetting: float, max_forgetting: float) -> float:
    return domain - max(0.0, forgetting - max_forgetting)


@torch.no_grad()
def perplexity(model: nn.Module, tokenizer: Any, passages: Sequence[str], max_tokens: int, batch_size: int = 2) -> float:
    """exp(mean next-token NLL) over the passages, each cut to `max_tokens` (as the eval's corpus score)."""
    rows = [encode_prompt(tokenizer, p)[:max_tokens] for p in passages]
    nll, count = 0.0, 0
    device = next(model.parameters()).device
    for start in range(0, len(rows), batch_size):
        ids, mask = left_pad(rows[start:start + batch_size], pad_id(tokenizer))
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.cpu()  # [B, T, V]
        keep = (mask[:, :-1] * mask[:, 1:]).bool()  # position t predicts t+1; both real tokens
        nll -= token_log_probs(logits[:, :-1][keep], ids[:, 1:][keep]).sum().item()
        count += int(keep.sum())
    mean = nll / count
    return math.exp(mean) if mean < 700 else math.inf  # a wrecked model's perplexity overflows a float


class Scorer:
    """Scores a model as it is (adapter on) on fixed examples, corpus passages and questions."""

    def __init__(self, tokenizer: Any, examples: Sequence[Example], passages: Sequence[str],
                 questions: Sequence[Question], max_new_tokens: int, max_forgetting: float,
                 general_tokens: int = 128, batch_size: int = 8) -> None:
        self.tokenizer, self.examples, self.passages, self.questions = tokenizer, examples, passages, questions
        self.max_new, self.max_forgetting = max_new_tokens, max_forgetting
        self.general_tokens, self.batch_size = general_tokens, batch_size
        self.qa_new = max(len(tokenizer(q.answer, add_special_tokens=False)["input_ids"]) for q in questions) + 4

    def _domain(self, model: nn.Module) -> DomainScores:
        prompts = [e.prompt for e in self.examples]
        outputs = generate(model, self.tokenizer, prompts, self.max_new, self.batch_size)
        return score_domain(prompts, outputs, [e.reference for e in self.examples])

    def _answers_right(self, model: nn.Module, indices: Sequence[int]) -> list[bool]:
        questions = [self.questions[i] for i in indices]
        if not questions:
            return []
        answers = generate(model, self.tokenizer, [q.prompt for q in questions], self.qa_new, self.batch_size)
        return [answer_correct(a, q.answer) for a, q in zip(answers, questions)]

    def baseline(self, model: nn.Module) -> Baseline:
        """Measure the bare base (call before any adapter is injected)."""
        model.eval()
        domain = self._domain(model)
        right = self._answers_right(model, range(len(self.questions)))
        return Baseline(domain.primary, domain.primary_value,
                        perplexity(model, self.tokenizer, self.passages, self.general_tokens),
                        tuple(i for i, ok in enumerate(right) if ok))

    def __call__(self, model: nn.Module, baseline: Baseline) -> TrialScores:
        was_training = model.training
        model.eval()
        try:
            domain = self._domain(model)
            ppl = perplexity(model, self.tokenizer, self.passages, self.general_tokens)
            right = self._answers_right(model, baseline.kept)
        finally:
            model.train(was_training)
        qa = sum(right) / len(right) if right else None
        forgetting = forgetting_score(baseline.ppl, ppl, math.nan, 1.0 if right else None, qa).score
        return TrialScores(domain.primary, domain.primary_value, domain.per_field_accuracy, domain.exact_match,
                           domain.hallucination_rate, ppl, qa, forgetting,
                           objective(domain.primary_value, forgetting, self.max_forgetting))
