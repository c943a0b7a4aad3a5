"""Name -> model-factory registry, so runs, checkpoints and CLIs can name architectures by string.

Architecture modules decorate their factories with ``@register_model("resnet20")``; ``build_model`` calls
the factory with keyword arguments (e.g. ``step_size``, ``num_classes``, ``in_channels``). Factories must
be importable at package import time (``nets/__init__.py`` imports the architecture modules).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

import torch.nn as nn

ModelFactory = Callable[..., nn.Module]
F = TypeVar("F", bound=ModelFactory)

_REGISTRY: dict[str, ModelFactory] = {}


def _key(name: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"model name must be a non-empty string, got {name!r}")
    return name.strip().lower()


def register_model(name: str, *, overwrite: bool = False) -> Callable[[F], F]:
    """Decorator registering ``factory(**kwargs) -> nn.Module`` under ``name`` (case-insensitive).

    Registering a taken name raises ``ValueError`` unless ``overwrite=True``.
    """
    key = _key(name)

    def decorator(factory: F) -> F:
        if not callable(factory):
            raise TypeError(f"model factory for {name!r} must be callable, got {type(factory).__name__}")
        if key in _REGISTRY and _REGISTRY[key] is not factory and not overwrite:
            raise ValueError(f"model name {name!r} is already registered (by {_REGISTRY[key]!r})")
        _REGISTRY[key] = factory
        return factory

    return decorator


def unregister_model(name: str) -> None:
    """Remove ``name`` from the registry (mainly for tests); unknown names raise ``KeyError``."""
    del _REGISTRY[_key(name)]


def get_model_factory(name: str) -> ModelFactory:
    """The factory registered under ``name``; unknown names raise ``KeyError`` listing the known ones."""
    try:
        return _REGISTRY[_key(name)]
    except KeyError:
        raise KeyError(
            f"unknown model {name!r}; available: {', '.join(available_models()) or '(none)'}"
        ) from None


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Instantiate the model registered under ``name`` with ``kwargs``; a bad keyword raises ``TypeError``."""
    factory = get_model_factory(name)
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as error:
        raise TypeError(f"bad arguments for model {name!r}: {error}") from None
    except ValueError:  # signature not introspectable: let the call itself complain
        pass
    model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise TypeError(f"factory for {name!r} returned {type(model).__name__}, not an nn.Module")
    return model


def accepted_kwargs(name: str) -> set[str] | None:
    """Keyword names the factory of ``name`` accepts, or None if it takes ``**kwargs`` (accepts anything)."""
    try:
        parameters = inspect.signature(get_model_factory(name)).parameters.values()
    except ValueError:
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def available_models() -> list[str]:
    """Sorted registered model names."""
    return sorted(_REGISTRY)
