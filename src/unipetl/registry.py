"""Which method handles which value of the design config: the plug-in registry.

A method module registers its class for one (field, value) of `PetlConfig` with `@register_method`;
a parameter source registers for a value of ``param_source`` with `@register_source`. `unipetl.methods`
imports the built-in ones. `PetlModel` asks `methods_for(config)` and `source_for(config)` and never
branches on a method itself. A third-party method registers the same way, from its own module.
"""

from __future__ import annotations

from typing import Any

# Fields that select methods, in attach order (the order fixes the methods' initialisation order).
SELECTING_FIELDS = ("param_source", "attn_mode", "ffn_mode", "full_finetune")

_METHODS: dict[tuple[str, Any], type] = {}
_SOURCES: dict[str, type] = {}


def register_method(field: str, value: Any):
    """Class decorator: the method that ``config.<field> == value`` selects. A method with
    ``replaces_design = True`` (diff pruning, a scaled mixture) is the whole change on its own."""
    if field not in SELECTING_FIELDS:
        raise ValueError(f"methods are selected by one of {SELECTING_FIELDS}, not {field!r}")

    def decorate(cls):
        if (field, value) in _METHODS and _METHODS[(field, value)] is not cls:
            raise ValueError(f"{field}={value!r} is already handled by {_METHODS[(field, value)].__name__}")
        _METHODS[(field, value)] = cls
        cls.selected_by = (field, value)
        return cls

    return decorate


def register_source(value: str):
    """Class decorator: the parameter source that ``config.param_source == value`` selects."""

    def decorate(cls):
        _SOURCES[value] = cls
        cls.selected_by = ("param_source", value)
        return cls

    return decorate


def methods_for(config) -> list[type]:
    """The method classes ``config`` selects, in attach order."""
    selected = []
    for field in SELECTING_FIELDS:
        cls = _METHODS.get((field, getattr(config, field)))
        if cls is None:
            continue
        if getattr(cls, "replaces_design", False):
            return [cls]
        selected.append(cls)
    return selected


def source_for(config) -> type | None:
    """The parameter source class of ``config`` (None where the selected method brings its own)."""
    return _SOURCES.get(config.param_source)


def registered() -> dict[tuple[str, Any], type]:
    return dict(_METHODS)
