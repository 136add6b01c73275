"""Writing the stored configuration as a file: every gateway with its upstreams, services, rules and keys, by name.

* Values equal to their defaults are left out (the file says only what was chosen); target ids are kept (health
  and usage are keyed by them), entity ids are not (the file names things).
* Keys: ``key_hash`` and ``key_prefix``, never a plaintext (the store has none).
* Provider credentials are never written: each secret becomes a ``${VAR}`` placeholder, ``<PROVIDER>_API_KEY``
  (``_2``, ``_3``, ... for different secrets of one provider; one variable for one secret used twice), with an
  ``Authorization`` scheme kept readable (``Bearer ${OPENAI_API_KEY}``). Applying the export therefore needs those
  variables set; unset, apply stops naming the first and writes nothing, so stored credentials are never wiped by
  a missing secret. The header comment lists the variables.
* A literal ``${`` in any other string is written ``$${`` so that it reads back unchanged.
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from .errors import ConfigError, Problem
from .resolve import State
from .shape import CHILDREN, VERSION, file_form, identity, label
from .source import LOADER_RESOLVERS

AUTH_SCHEMES = ("bearer", "basic", "token")


class Exported:
    """An export: the document and the environment variables its credentials need."""

    def __init__(self, document: dict[str, Any], variables: list[str]) -> None:
        self.document = document
        self.variables = variables

    def yaml(self) -> str:
        header = ["# aigw configuration (aigw config export). Apply: aigw config apply <file> [--dry-run] [--prune]",
                  "# Entities refer to each other by name. Provider credentials are not in this file: they are read",
                  "# from the environment when the file is applied or served (aigw up --config)."]
        if self.variables:
            header.append(f"# Variables: {', '.join(self.variables)}")
        body = yaml.dump(self.document, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120,
                         default_flow_style=False)
        return "\n".join(header) + "\n" + body

    def json(self) -> str:
        return json.dumps(self.document, ensure_ascii=False, indent=2) + "\n"


def export(store: Any) -> Exported:
    """The store (anything with the Store's ``list``) as a document. Raises ConfigError when names are ambiguous
    (two services of one gateway with the same name cannot be referred to by name)."""
    return export_state(State.from_store(store))


def export_state(state: State) -> Exported:
    _refuse_ambiguous(state)
    names = {e.id: identity(kind, e) for kind in ("upstreams", "services") for e in state.entities[kind]}
    secrets = _Secrets()
    gateways = []
    for gateway in state.entities["gateways"]:
        doc = _escape(file_form("gateways", gateway, names, defaults=False))
        for kind in CHILDREN:
            items = []
            for entity in state.children(kind, gateway.id):
                item = _escape(file_form(kind, entity, names, defaults=False))
                if kind == "upstreams":
                    for target, stored in zip(item.get("targets", []), getattr(entity, "targets")):
                        if stored.credentials is not None:
                            target["credentials"] = secrets.placeholder(stored.provider, stored.credentials)
                items.append(item)
            if items:
                doc[kind] = items
        gateways.append(doc)
    return Exported({"version": VERSION, "gateways": gateways}, secrets.variables())


def _refuse_ambiguous(state: State) -> None:
    problems = []
    seen: dict[tuple, str] = {}
    for gateway in state.entities["gateways"]:
        scope = [("gateways", gateway)] + [(kind, e) for kind in CHILDREN for e in state.children(kind, gateway.id)]
        for kind, entity in scope:
            key = (kind, "" if kind in ("gateways", "keys") else gateway.id, identity(kind, entity))
            if key in seen:
                where = "" if kind == "gateways" else f" in gateway {getattr(gateway, 'name')!r}"
                problems.append(Problem(f"{kind}.{entity.id}", f"two {kind} are {label(kind, entity)!r}{where} "
                                                               f"({seen[key]}, {entity.id}); rename one first"))
            seen.setdefault(key, entity.id)
    if problems:
        raise ConfigError(problems, source="the store", status=409)


class _Secrets:
    """Assigns one variable name per distinct secret."""

    def __init__(self) -> None:
        self._by_secret: dict[str, str] = {}

    def name_for(self, provider: str | None, secret: str) -> str:
        if secret in self._by_secret:
            return self._by_secret[secret]
        base = re.sub(r"[^A-Z0-9]+", "_", (provider or "target").upper()).strip("_") + "_API_KEY"
        name, n = base, 1
        while name in self._by_secret.values():
            n += 1
            name = f"{base}_{n}"
        self._by_secret[secret] = name
        return name

    def placeholder(self, provider: str | None, credentials: Any) -> dict[str, Any]:
        secret = credentials.secret()
        scheme, space, token = secret.partition(" ")
        if space and scheme.lower() in AUTH_SCHEMES and token:
            value = f"{scheme} ${{{self.name_for(provider, token)}}}"
        else:
            value = f"${{{self.name_for(provider, secret)}}}"
        if credentials.api_key is not None:
            return {"api_key": value}
        return {"header_name": credentials.header_name, "header_value": value}

    def variables(self) -> list[str]:
        return list(self._by_secret.values())


def _escape(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("${", "$${")
    if isinstance(value, list):
        return [_escape(item) for item in value]
    if isinstance(value, dict):
        return {key: _escape(item) for key, item in value.items()}
    return value


class _Dumper(yaml.SafeDumper):
    """Block style, short lists of scalars inline (``methods: [POST]``), no aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        return super().increase_indent(flow, False)  # list items indented under their key


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    inline = data and all(isinstance(v, (str, int, float, bool)) for v in data) and len(json.dumps(data)) <= 80
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=bool(inline))


_Dumper.add_representer(list, _represent_list)
# Quote every string that either YAML 1.1 readers or aigw's own (YAML 1.2) loader would read as another type.
for _first, _resolvers in LOADER_RESOLVERS.items():
    for _tag, _regexp in _resolvers:
        _Dumper.add_implicit_resolver(_tag, _regexp, [_first])
