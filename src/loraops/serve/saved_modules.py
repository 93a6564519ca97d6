"""An encoder adapter's `modules_to_save` in a batch that mixes tenants: its classifier head (and a
pooler its base checkpoint lacked), each batch row applied with its own tenant's tensors.

These modules train whole, so they cannot live in a low-rank slot: the slot pool keeps them with
the rest of each resident adapter (`SlotPool.held`), and each `PerRowModule` puts them in per row
(lora/per_row.py: one `functional_call` per distinct adapter in the batch). The per-row modules
are the head, every linear of a pooler, and every other module the base checkpoint has no weights
for; none of them is a LoRA target (the encoder engine leaves them out of the slot pool).

Labels: the adapter's `loraops.json` `labels` (what `loraops train --task classification` writes),
else the base config's `id2label` when it has as many, else LABEL_0..LABEL_{k-1} (transformers'
names). Rows whose head has fewer outputs than another in the batch are padded with -inf.
"""

from __future__ import annotations

import torch
from torch import nn

from loraops.errors import AdapterFormatError, AdapterMismatchError, ConfigError
from loraops.lora import Adapter
from loraops.lora.inject import set_submodule
from loraops.lora.per_row import module_params, per_row_apply
from loraops.serve.errors import UnsupportedAdapterError
from loraops.train.classify import HEADS


class PerRowModule(nn.Module):
    """A base module applied with each batch row's own tensors: `row_params[b]` names every
    parameter of `base` (set by the engine around each forward; None: the base module as it is)."""

    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base
        self.row_params: list[dict[str, torch.Tensor]] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.row_params is None:
            return self.base(x)
        return per_row_apply(self.base, x, self.row_params)    # x: [B, ...] -> [B, ..., out_max]


def _under(name: str, path: str) -> bool:
    return name == path or name.startswith(path + ".")


class SavedModules:
    """The encoder's per-row modules (installed in place), what an adapter must bring for them,
    and the labels of each adapter's head."""

    def __init__(self, model: nn.Module, untrained: list[str]):
        """untrained: the modules the base checkpoint has no weights for (models.EncoderBase)."""
        self.head = next((h for h in HEADS if hasattr(model, h)), None)
        if self.head is None:
            raise ConfigError(f"{type(model).__name__} has no classification head ({' or '.join(HEADS)})")
        head = model.get_submodule(self.head)
        out = [name for name, m in head.named_modules() if isinstance(m, nn.Linear)][-1]
        prefix = f"{out}." if out else ""
        self.out_weight, self.out_bias = prefix + "weight", prefix + "bias"   # [k, in], [k]: k labels
        poolers = [p for p, m in model.named_modules() if isinstance(m, nn.Linear) and "pooler" in p.split(".")]
        self.paths: list[str] = []
        for path in sorted([self.head, *poolers, *untrained], key=len):
            if not any(_under(path, p) for p in self.paths):
                self.paths.append(path)
        self.untrained = untrained
        self.id2label = model.config.id2label
        self.layers = {}
        for path in self.paths:
            self.layers[path] = PerRowModule(model.get_submodule(path))
            set_submodule(model, path, self.layers[path])
        self.base_params = {p: dict(layer.base.named_parameters()) for p, layer in self.layers.items()}

    @property
    def base_servable(self) -> bool:
        """The checkpoint has trained weights for every per-row module (a `*ForSequenceClassification` one)."""
        return not self.untrained

    def exclude(self, paths: list[str]) -> list[str]:
        """`paths` without the per-row modules (and what is inside them): the LoRA targets."""
        return [p for p in paths if not any(_under(p, q) for q in self.paths)]

    # ---- validation (pure; any thread) -------------------------------------------------------

    def check(self, adapter: Adapter) -> None:
        """Raise unless every saved tensor belongs to a per-row module with the base's shapes (the
        head's output width aside), every untrained module is saved, and the labels fit the head."""
        if adapter.config.task_type not in (None, "SEQ_CLS"):
            raise UnsupportedAdapterError(f"a {adapter.config.task_type} adapter cannot be served by this "
                                          f"sequence-classification server")
        for key in adapter.saved_modules:
            if not any(_under(key, p) for p in self.paths):
                raise UnsupportedAdapterError(f"the adapter saves {key!r}; this server applies only these saved "
                                              f"modules per request: {', '.join(self.paths)}")
        for path in self.untrained:
            if not any(_under(key, path) for key in adapter.saved_modules):
                raise AdapterMismatchError(f"the base checkpoint has no weights for {path!r} and the adapter does "
                                           f"not save them (modules_to_save)")
        for path in self.paths:
            if not self._saves(adapter, path):
                continue
            params, base = module_params(adapter, path), self.base_params[path]
            if set(params) != set(base):
                raise AdapterMismatchError(f"{path}: the adapter saves {sorted(params)}, the module has {sorted(base)}")
            for name, t in params.items():
                want = tuple(base[name].shape)
                head_out = path == self.head and name in (self.out_weight, self.out_bias)
                if tuple(t.shape) != want and not (head_out and tuple(t.shape[1:]) == want[1:]):
                    raise AdapterMismatchError(f"{path}.{name}: the adapter's is {tuple(t.shape)}, the base's {want}")
        if (k := self._width(adapter)) < 2:
            raise UnsupportedAdapterError(f"the adapter's head has {k} output; only classification heads (at least "
                                          f"2 labels) are served")
        self.labels(adapter)

    def labels(self, adapter: Adapter | None) -> list[str]:
        """The label names of `adapter`'s head (None: the base's), one per output."""
        k = self._width(adapter)
        names = adapter.meta.get("labels") if adapter is not None else None
        if names is None:
            if len(self.id2label) == k:
                return [str(self.id2label[i]) for i in range(k)]
            return [f"LABEL_{i}" for i in range(k)]
        if (not isinstance(names, list) or not all(isinstance(n, str) and n for n in names)
                or len(names) != k or len(set(names)) != k):
            raise AdapterFormatError(f"loraops.json: 'labels' must be {k} distinct non-empty strings, one per "
                                     f"output of the adapter's head")
        return names

    def _saves(self, adapter: Adapter, path: str) -> bool:
        return any(_under(key, path) for key in adapter.saved_modules)

    def _width(self, adapter: Adapter | None) -> int:
        if adapter is not None and self._saves(adapter, self.head):
            return module_params(adapter, self.head)[self.out_weight].shape[0]
        return self.base_params[self.head][self.out_weight].shape[0]

    # ---- the forward (engine thread) ---------------------------------------------------------

    def bind(self, rows: list[Adapter | None] | None) -> None:
        """Per batch row, the adapter whose saved tensors it uses (None: the base's own), for the
        next forward; `bind(None)` after it."""
        for path, layer in self.layers.items():
            if rows is None:
                layer.row_params = None
                continue
            shared: dict[int, dict[str, torch.Tensor]] = {}    # one dict per adapter: one call per adapter
            for a in rows:
                if id(a) not in shared:
                    shared[id(a)] = self._params(a, path)
            layer.row_params = [shared[id(a)] for a in rows]

    def _params(self, adapter: Adapter | None, path: str) -> dict[str, torch.Tensor]:
        base = self.base_params[path]
        if adapter is None or not self._saves(adapter, path):
            return base
        return {name: t.to(base[name].dtype) for name, t in module_params(adapter, path).items()}
