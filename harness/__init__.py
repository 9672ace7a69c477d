"""dabench's engine: protocols, registry, config, cache, runner, timing, records, report tables.

Importing this package is cheap (no torch). The command line, figures and HTML page live in dabench/
(presentation), which imports this package and never the other way round.
"""

__version__ = "0.1.0"
