"""The registry of methods. A method is a folder (or module) beside this file whose ``METHODS`` holds
its :class:`~maediff_core.methods.base.Method`, and one line in ``FOLDERS``; training, detection,
evaluation, profiling and the benchmark then run it without naming it.
"""

from __future__ import annotations

import importlib

from .base import Method, ModelConfig

FOLDERS = (
    "patch",  # MAEDiff, pDDPM, AnoDDPM
    "cddpm",
    "madad",
)
REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Make ``method`` known under its name (a later method of the same name replaces it)."""
    REGISTRY[method.name] = method
    return method


for _folder in FOLDERS:
    for _method in importlib.import_module(f".{_folder}", __name__).METHODS:
        register(_method)


def method_of(name: str) -> Method:
    if name not in REGISTRY:
        raise ValueError(f"method must be one of {', '.join(REGISTRY)}, got {name!r}")
    return REGISTRY[name]


def named_configs() -> dict[str, ModelConfig]:
    """Every registered method's named configurations: the paper-size ones, then the CPU-sized."""
    configs = {name: config for method in REGISTRY.values() for name, config in method.configs().items()}
    return {name: configs[name] for name in sorted(configs, key=lambda name: name.endswith("-small"))}


def get_config(name: str) -> ModelConfig:
    configs = named_configs()
    if name not in configs:
        raise ValueError(f"unknown configuration {name!r}; choose one of {', '.join(configs)}")
    return configs[name]


def is_small(config: ModelConfig) -> bool:
    """A CPU-sized configuration (trained with the CPU recipe unless told)."""
    return config.name.endswith("-small")
