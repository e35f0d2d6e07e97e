"""Actor type name → class.

Built-in types map to ``"module:Class"`` strings imported only when used, so ``sctl`` does not
import paho or c104 to run an unrelated actor. A ``type`` containing ":" names a class directly
(``"tests.support.actors:EchoActor"``, or a site's own extension module on the Python path).
Every failure is a ConfigError on ``actors.NAME.type`` raised before anything starts.
"""

from __future__ import annotations

import importlib
from typing import Any, Final

import zmq

from actors.base import Actor
from broker.config import ActorConfig, SiteConfig
from broker.errors import ConfigError

BUILTIN: Final[dict[str, str]] = {
    # later issues add the device types here, e.g.
    # "springcore-tcp": "actors.springcore_tcp:SpringCoreTcpActor",
}


def known_types() -> list[str]:
    return sorted(BUILTIN)


def actor_class(type_name: str, path: str = "type", source: str = "") -> type[Actor]:
    """The class for `type_name`; raises ConfigError(path, reason) if there is none."""
    target = type_name if ":" in type_name else BUILTIN.get(type_name)
    if target is None:
        known = ", ".join(known_types()) or "none built in yet"
        raise ConfigError(path, f"unknown actor type {type_name!r} (known: {known}; "
                                "or name a class as 'package.module:Class')", source)
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(path, f"cannot import {module_name!r} for actor type {type_name!r}: "
                                f"{exc}", source) from None
    cls = getattr(module, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, Actor)):
        what = "is missing" if cls is None else "is not an Actor subclass"
        raise ConfigError(path, f"{target!r} {what} (actor type {type_name!r})", source)
    return cls


def create_actor(site: SiteConfig, name: str, *, context: zmq.Context[Any] | None = None) -> Actor:
    """Look up ``[actors.NAME]``, resolve its type and check its settings; opens nothing."""
    cfg: ActorConfig = site.actor(name)
    cls = actor_class(cfg.type, f"{cfg.path}.type", cfg.source)
    return cls.from_config(cfg, site.router, context=context)
