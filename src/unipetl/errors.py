"""Error types. Every message names the file, field or value at fault and what was expected."""


class UnipetlError(Exception):
    """Base class for every error this library raises on purpose."""


class ConfigError(UnipetlError, ValueError):
    """A design-config field has an unknown value or an impossible combination."""


class UnsupportedModelError(UnipetlError, ValueError):
    """The backbone's architecture has no site table."""


class ModuleFormatError(UnipetlError, ValueError):
    """A saved task module is malformed, altered, of an unknown version or for another backbone."""


class DataError(UnipetlError, ValueError):
    """Task data is missing, unreadable or malformed."""


class UnknownTaskError(UnipetlError, KeyError):
    """A request names a task that a task bank does not hold (never loaded, or unloaded since)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
