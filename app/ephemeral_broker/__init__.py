"""ephemeral-broker: an in-memory key/value and lease broker over a Unix domain socket."""

__version__ = "0.1.0"
