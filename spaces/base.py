"""A search space: per searchable layer of one model, the legal choices."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from models import Architecture, ArchitectureError, LayerSlot, LayerSpec, get_model_family
from models.architecture import check_hetconv_nesting

__all__ = ["SearchSpace", "SpaceError", "TrialLike"]


class SpaceError(ValueError):
    """A user-facing problem with a space (unknown name, malformed file, illegal choice)."""


class TrialLike(Protocol):
    """What a space needs from an Optuna trial (any object with ``suggest_categorical``)."""

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any: ...


@dataclass(frozen=True)
class SearchSpace:
    """Per-layer choices for one model at one width.

    ``choices[i]`` lists the legal :class:`LayerSpec` of searchable layer ``i`` (``slots[i]``).
    A candidate is sampled with one categorical parameter per layer, named after the layer
    and valued by the spec's label (``hetconv:4``), so that the dashboard reads naturally.

    Example:
        >>> import optuna
        >>> from spaces import get_space
        >>> space = get_space("vgg_hetconv", width=0.25)
        >>> study = optuna.create_study()
        >>> arch = space.sample(study.ask())
        >>> len(arch.layers)
        12
    """

    name: str
    description: str
    model: str
    width: float
    num_classes: int
    slots: tuple[LayerSlot, ...]
    choices: tuple[tuple[LayerSpec, ...], ...]
    default_type: str  # what a bare number means in ``uniform``: "hetconv" (part) or "flgc" (groups)
    # Named baselines (published models) that are candidates of this space at this width:
    # (name, one spec per slot). Not part of the fingerprint: they do not change the space.
    named: tuple[tuple[str, tuple[LayerSpec, ...]], ...] = ()
    # A space file's 'choices' that some layers cannot take, and those layers: (label, names).
    # Dropped there (``spaces FILE`` lists them); not part of the fingerprint either.
    unfit: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @classmethod
    def from_choices(
        cls,
        name: str,
        description: str,
        model: str,
        width: float,
        num_classes: int,
        default_type: str,
        choose: Any,
        baselines: Mapping[str, Any] | None = None,
    ) -> SearchSpace:
        """Build a space by calling ``choose(slot) -> list[LayerSpec]`` for every searchable layer.

        ``baselines`` maps a name to ``spec_of(slot) -> LayerSpec``; a baseline is kept only
        where every one of its choices is legal in the space at this width."""
        slots = tuple(get_model_family(model).slots(width))
        choices = []
        for slot in slots:
            legal = tuple(dict.fromkeys(choose(slot)))
            if not legal:
                raise SpaceError(f"space {name}: layer {slot.name} has no legal choice")
            for spec in legal:
                spec.check(slot)
            choices.append(legal)
        try:  # refused for the whole space, before a trial samples such a mix
            check_hetconv_nesting(spec for legal in choices for spec in legal)
        except ArchitectureError as err:
            raise SpaceError(f"space {name}: {err}") from None
        named = []
        for label, spec_of in (baselines or {}).items():
            specs = tuple(spec_of(slot) for slot in slots)
            if all(spec in options for spec, options in zip(specs, choices)):
                named.append((label, specs))
        return cls(
            name, description, model, float(width), num_classes, slots, tuple(choices), default_type, tuple(named)
        )

    # -- candidates ---------------------------------------------------------------------

    def sample(self, trial: TrialLike) -> Architecture:
        labels = {
            slot.name: trial.suggest_categorical(slot.name, [spec.label for spec in options])
            for slot, options in zip(self.slots, self.choices)
        }
        return self.from_params(labels)

    def from_params(self, params: Mapping[str, Any]) -> Architecture:
        """The architecture of a trial's parameters (layer name -> label)."""
        specs = []
        for slot, options in zip(self.slots, self.choices):
            if slot.name not in params:
                raise SpaceError(f"space {self.name}: no choice for layer {slot.name}")
            spec = LayerSpec.from_label(params[slot.name])
            if spec not in options:
                legal = ", ".join(o.label for o in options)
                raise SpaceError(f"space {self.name}: {spec.label} is not a choice of layer {slot.name} ({legal})")
            specs.append(spec)
        return Architecture(self.model, self.width, self.num_classes, tuple(specs))

    def contains(self, arch: Architecture) -> bool:
        """Whether ``arch`` is a candidate of this space (same model, width, every choice legal here)."""
        return (
            arch.model == self.model
            and arch.width == self.width
            and len(arch.layers) == len(self.choices)
            and all(spec in options for spec, options in zip(arch.layers, self.choices))
        )

    def to_params(self, arch: Architecture) -> dict[str, str]:
        """Inverse of :meth:`from_params` (used to enqueue baselines)."""
        return {slot.name: spec.label for slot, spec in zip(self.slots, arch.layers)}

    def dense(self) -> Architecture:
        """The dense model of this space (every searchable layer a standard conv)."""
        return Architecture(self.model, self.width, self.num_classes, (LayerSpec.dense(),) * len(self.slots))

    def uniform_values(self) -> list[str]:
        """``dense`` (always buildable), then the choices legal at every layer, in the order
        of the first layer's choices."""
        common = set(self.choices[0]).intersection(*map(set, self.choices[1:]))
        return ["dense"] + [self._uniform_name(s) for s in self.choices[0] if s in common and s.type != "dense"]

    def baseline_values(self) -> list[str]:
        """What ``--baselines`` queues: the uniform values, then the space's named baselines
        (published models such as ``flgc-paper``); each is a value :meth:`uniform` accepts."""
        return [*self.uniform_values(), *(label for label, _ in self.named)]

    def _uniform_name(self, spec: LayerSpec) -> str:
        if spec.type == self.default_type and spec.balanced:
            return str(spec.part if spec.type == "hetconv" else spec.groups)
        return spec.label

    def uniform(self, value: str | int) -> Architecture:
        """Every searchable layer at the same choice: ``4`` (the space's own layer type) or a
        label such as ``hetconv:4``; ``dense`` is the dense model; a named baseline of the
        space (``flgc-paper``) is that published model."""
        text = str(value).strip()
        if text == "dense":
            return self.dense()
        named = dict(self.named)
        if text in named:
            return Architecture(self.model, self.width, self.num_classes, named[text])
        if text.isdigit():
            text = f"{self.default_type}:{text}"
        try:
            spec = LayerSpec.from_label(text)
        except ValueError:
            raise SpaceError(
                f"{value!r} is not a uniform value of space {self.name}; legal: {', '.join(self.baseline_values())}"
            ) from None
        for slot, options in zip(self.slots, self.choices):
            if spec not in options:
                legal = ", ".join(self.baseline_values())
                raise SpaceError(
                    f"{value} is not a legal uniform value of space {self.name} "
                    f"(not a choice of layer {slot.name}); legal: {legal}"
                )
        return Architecture(self.model, self.width, self.num_classes, (spec,) * len(self.slots))

    # -- description ----------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Number of distinct candidates."""
        return math.prod(len(options) for options in self.choices)

    def fingerprint(self) -> dict[str, Any]:
        """What must match for two runs to share a study."""
        return {
            "space": self.name,
            "model": self.model,
            "width": self.width,
            "num_classes": self.num_classes,
            "choices": {slot.name: [s.label for s in opts] for slot, opts in zip(self.slots, self.choices)},
        }
