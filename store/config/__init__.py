"""Config as code: the whole configuration as one YAML file (docs/config.md).

``source`` reads a file safely (bounds, ``${VAR}``, positions), ``shape`` says what the file holds (derived from the
store models), ``resolve`` turns it into entities with stable ids, ``plan`` compares them with the store,
``apply`` carries a plan out atomically, ``export`` writes the store as a file and ``loader`` serves a file without
a database. No Flask, no mitmproxy.
"""

from .apply import plan_or_apply
from .errors import ConfigError, Problem
from .export import Exported, export
from .loader import ConfigFileLoader, ConfigFileStore, load_state
from .plan import Plan
from .resolve import Desired, State, resolve
from .shape import json_schema
from .source import MAX_BYTES, Source, parse_json, parse_yaml, read_file

__all__ = [
    "MAX_BYTES", "ConfigError", "ConfigFileLoader", "ConfigFileStore", "Desired", "Exported", "Plan", "Problem",
    "Source", "State", "export", "json_schema", "load_state", "parse_json", "parse_yaml", "plan_or_apply",
    "read_file", "resolve",
]
