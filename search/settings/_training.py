"""How one candidate is trained: the part of the settings that an exported config carries too."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from search.settings._validation import NUMBERS, SettingsError, check_choice, check_device, check_number

__all__ = ["TrainingSettings"]


@dataclass(frozen=True)
class TrainingSettings:
    """How one candidate is trained and evaluated (identical for every trial of a study,
    except for the hyperparameters a ``--tune`` sweep samples)."""

    dataset: str = "cifar10"
    data_dir: str = "data"
    epochs: int = 15
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    warmup_epochs: float = 1.0
    val_size: int | None = None
    split_seed: int = 0
    device: str = "auto"
    amp: bool = True  # used only on CUDA
    channels_last: bool = True  # used only on CUDA
    cuda_graphs: str = "auto"  # used only on CUDA: auto, on, off (search/evaluation/step.py)
    threads: int | None = None  # torch CPU threads per trial (None: torch's default)

    def replace(self, **changes: Any) -> TrainingSettings:
        return dataclasses.replace(self, **changes)

    def validate(self, where: str = "") -> TrainingSettings:
        """Check every field against the table (``where`` prefixes the field in messages, e.g.
        ``config x.json: training.``; empty: the option names)."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in NUMBERS:
                check_number(f.name, value, where)
            elif f.name in ("amp", "channels_last") and not isinstance(value, bool):
                raise SettingsError(f"{where or '--'}{f.name} must be true or false, got {value!r}")
        check_choice("dataset", self.dataset, where)
        check_choice("cuda_graphs", self.cuda_graphs, where)
        check_device(self.device, where)
        if not isinstance(self.data_dir, (str, PurePath)) or not str(self.data_dir) or "\x00" in str(self.data_dir):
            raise SettingsError(
                f"{where or '--'}data{'_' if where else '-'}dir must be a folder name, got {self.data_dir!r}"
            )
        return self

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainingSettings:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
