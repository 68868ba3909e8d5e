"""The package's version, in a module of its own: what reads it (the CLI, the fleet's reports)
need not import the package's public API, and with it the runtime's lazy imports."""

VERSION = "0.1.0"
