"""The one-line errors a bad config or input raises before any work."""


class ConfigError(ValueError):
    """A config (or an input it names) is not usable; the message is one line."""
