"""The model registry: architectures register by name with the options they accept.

``create_model("hspnet", encoder="resnet101")`` builds a model; an unknown name, option or value
raises :class:`~cervrt.errors.CervrtError` listing the valid ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from cervrt.constants import NUM_CLASSES
from cervrt.errors import CervrtError

#: What a registered architecture predicts.
TASKS = ("segmentation", "classification")

__all__ = ["TASKS", "ModelSpec", "create_model", "get_spec", "list_models", "register_model"]


@dataclass(frozen=True)
class ModelSpec:
    """A registered architecture: its builder, its options' valid values, its defaults and capabilities.

    Capabilities answer what callers used to probe the model class for: ``task`` ("segmentation" or
    "classification"), ``has_classifier`` (a segmentation model with a patch classifier head, which
    also outputs ``class_probs``), ``is_classifier`` (predicts patch classes only, no masks) and
    ``size_multiple`` (input sides must be a multiple of it), ``trained_by`` (the cervrt command
    that trains it: ``train`` for all but the WSSS phase-1 classifier, ``wsss train-cls``).
    """

    name: str
    builder: Callable[..., nn.Module]
    choices: dict[str, tuple[Any, ...]]
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    task: str = "segmentation"
    has_classifier: bool = False
    size_multiple: int = 32
    trained_by: str = "train"

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise CervrtError(f"{self.name}: task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.has_classifier and self.task != "segmentation":
            raise CervrtError(f"{self.name}: only a segmentation model can have a patch classifier head")

    @property
    def is_classifier(self) -> bool:
        """True for a patch classifier: it predicts no masks (cannot be exported or run on slides)."""
        return self.task == "classification"

    def resolve(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Validate ``kwargs`` and fill in defaults; returns the full keyword arguments."""
        valid = [*self.choices, "num_classes"]
        unknown = sorted(set(kwargs) - set(valid))
        if unknown:
            raise CervrtError(f"{self.name} has no option {', '.join(unknown)}: valid options are {', '.join(valid)}")
        full = {**self.defaults, "num_classes": NUM_CLASSES, **kwargs}
        for key, values in self.choices.items():
            if full[key] not in values:
                raise CervrtError(
                    f"{self.name} {key} {full[key]!r} is not supported: choose one of {', '.join(map(str, values))}"
                )
        if not isinstance(full["num_classes"], int) or full["num_classes"] < 2:
            raise CervrtError(f"num_classes must be an integer of at least 2, got {full['num_classes']!r}")
        return full


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(name: str, choices: dict[str, tuple[Any, ...]], defaults: dict[str, Any],
                   description: str = "", *, task: str = "segmentation", has_classifier: bool = False,
                   size_multiple: int = 32, trained_by: str = "train"
                   ) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a model class or factory under ``name`` with its capabilities."""

    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = ModelSpec(name, builder, choices, defaults, description, task=task,
                                    has_classifier=has_classifier, size_multiple=size_multiple,
                                    trained_by=trained_by)
        return builder

    return decorate


def list_models() -> list[str]:
    """Names of the registered architectures."""
    return sorted(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    """The spec of ``name``; an unknown name raises CervrtError listing the valid ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise CervrtError(f"unknown architecture {name!r}: choose one of {', '.join(list_models())}") from None


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build architecture ``name`` with validated keyword arguments."""
    spec = get_spec(name)
    return spec.builder(**spec.resolve(kwargs))
