"""Public import path for writing an actor: ``from actors.base import Actor, command``.

The implementation lives in `actors.core.actor` (the base) and `actors.core.commands`.
"""

from actors.core.actor import Actor, CommandError, Deferred, Param, Setting, command

__all__ = ["Actor", "CommandError", "Deferred", "Param", "Setting", "command"]
