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

from actors.core.actor import Actor
from broker.config import ActorConfig, Setting, SiteConfig
from broker.wire.errors import ConfigError

SIM_PREFIX: Final = "sim-"  # simulator types: "sim-" + the kind given to `sctl sim KIND`

BUILTIN: Final[dict[str, str]] = {
    "springcore-tcp": "actors.springcore_tcp:SpringCoreTcpActor",
    "springcore-mqtt": "actors.springcore_mqtt:SpringCoreMqttActor",
    "spec-client": "actors.spec_client:SpecClientActor",
    "bus-link": "actors.bus_link:BusLinkActor",
    "iec104-server": "actors.iec104_server:Iec104ServerActor",
    "mqtt-bridge": "actors.mqtt_bridge:MqttBridgeActor",
    SIM_PREFIX + "springcore-tcp": "actors.sim.springcore_tcp:SpringCoreTcpSim",
    SIM_PREFIX + "springcore-mqtt": "actors.sim.springcore_mqtt:SpringCoreMqttSim",
    SIM_PREFIX + "spec-server": "actors.sim.spec_server:SpecServerSim",
    SIM_PREFIX + "instrument": "actors.sim.instrument:InstrumentSim",
    SIM_PREFIX + "iec104-master": "actors.sim.iec104_master:Iec104MasterSim",
}


def sim_kinds() -> list[str]:
    """What `sctl sim KIND` accepts."""
    return sorted(t[len(SIM_PREFIX):] for t in BUILTIN if t.startswith(SIM_PREFIX))


def sim_config(site: SiteConfig, kind: str, name: str | None,
               overrides: dict[str, Any]) -> ActorConfig:
    """The table a simulator runs with: ``[actors.NAME]`` of the site when it is there (its type
    must be ``sim-KIND``), else an empty one named ``NAME`` (default ``sim-KIND``); then the
    `overrides` (``--set key=value``) on top. Raises ConfigError."""
    type_name = SIM_PREFIX + kind
    if type_name not in BUILTIN:
        raise ConfigError("", f"unknown simulator kind {kind!r} (known: "
                              f"{', '.join(sim_kinds())})")
    name = name or type_name
    base = site.actors.get(name)
    if base is not None and base.type != type_name:
        raise ConfigError(f"{base.path}.type", f"is {base.type!r}, not {type_name!r}: "
                                               f"that actor is not a {kind} simulator",
                          base.source)
    settings = dict(base.settings) if base is not None else {}
    settings.update(overrides)
    return ActorConfig(name=name, type=type_name, settings=settings,
                       source=base.source if base is not None else "sctl sim --set",
                       folder=base.folder if base is not None else site.folder)


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


def describe_type(type_name: str) -> dict[str, Any]:
    """What an actor type accepts, with no actor running (``sctl describe TYPE``): its doc, its
    settings (base settings first) with type, default and doc, and its commands. Raises
    ConfigError for an unknown type."""
    cls = actor_class(type_name)
    doc = (cls.__doc__ or "").strip().split("\n\n")[0]
    own = {s.name for s in cls.settings}
    return {
        "type": type_name, "doc": " ".join(doc.split()),
        "settings": [{"name": s.name, "type": setting_type(s), "required": s.required,
                      "default": s.default, "doc": s.doc, "base": s.name not in own}
                     for s in cls.declared_settings()],
        "commands": [cls.commands[n].describe() for n in sorted(cls.commands)],
    }


def setting_type(s: Setting) -> str:
    kinds = s.kind if isinstance(s.kind, tuple) else (s.kind,)
    names = {str: "string", int: "integer", float: "number", bool: "boolean", list: "list",
             dict: "table"}
    return " or ".join(names.get(k, k.__name__) for k in kinds) + (" (path)" if s.path else "")


def create_actor(site: SiteConfig, name: str, *, context: zmq.Context[Any] | None = None,
                 cfg: ActorConfig | None = None) -> Actor:
    """Look up ``[actors.NAME]`` (or use `cfg`), resolve its type and check its settings;
    opens nothing."""
    if cfg is None:
        cfg = site.actor(name)
    cls = actor_class(cfg.type, f"{cfg.path}.type", cfg.source)
    return cls.from_config(cfg, site.router, context=context)
