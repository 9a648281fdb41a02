"""User-facing errors: one clear line for the operator, a nonzero exit, no traceback.

Raise ``MeshagentError`` (or a subclass) for anything the person at the keyboard can fix:
a bad flag value, a missing file, a key with the wrong mode. The CLI prints
``meshagent: error: <message>`` and exits 1. Bugs stay ordinary exceptions.
"""


class MeshagentError(Exception):
    """Something the user can fix; ``str(exc)`` is the whole message."""


class ConfigError(MeshagentError):
    """The node's configuration is invalid; the message names the key."""
