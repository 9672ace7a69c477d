"""dabench's engine: protocols, registry, config, cache, runner, timing, records, reports, CLI.

Importing this package is cheap (no torch): see harness.cli for the command line.
"""

__version__ = "0.1.0"
