"""The file's shape, derived from the store models and the repository's kinds: no second copy of any rule.

A gateway holds its ``upstreams``, ``services``, ``rules`` and ``keys``; every entity is its model's fields minus
the server-owned ones (``id``, ``gateway_id``, timestamps), and a reference field ``<kind>_id`` of the repository
(``Kind.references``) is written ``<kind>: <name>``. Keys carry ``key_hash`` and ``key_prefix``, or ``key`` (a
plaintext read from the environment, hashed at load). Fields are iterated from the models, so a field added to a
model appears in the file, the export and the JSON Schema without a change here.

Identity (what "the same entity" means across an apply): a gateway by ``name``; an upstream or service by
``name`` within its gateway; a rule by ``name`` when it has one, else by its methods and path; a key by its hash.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel

from ..models import ApiKey, Entity, Rule
from ..repo import GATEWAY_CHILDREN, KINDS
from .errors import ConfigError, Problem, dotted

#: Fields the repository owns: never in the file.
SERVER_FIELDS: frozenset[str] = Entity.SERVER_FIELDS
#: A gateway's children in the order the file lists them (what they reference comes first).
CHILDREN: tuple[str, ...] = tuple(reversed(GATEWAY_CHILDREN))
#: The plaintext key field of a key in the file (read from the environment, hashed at load, never written).
PLAINTEXT_KEY = "key"
TOP_LEVEL: tuple[str, ...] = ("version", "gateways")
VERSION = 1


@dataclass(frozen=True)
class Reference:
    field: str  # the model's field, e.g. upstream_id
    name: str  # the file's field, e.g. upstream
    table: str  # the kind it names


def references(kind: str) -> tuple[Reference, ...]:
    return tuple(Reference(field, field.removesuffix("_id"), table) for field, table in KINDS[kind].references)


def entity_fields(kind: str) -> list[str]:
    """The fields one entity of ``kind`` may have in the file, in model order."""
    renames = {ref.field: ref.name for ref in references(kind)}
    fields = [renames.get(name, name) for name in KINDS[kind].model.model_fields if name not in SERVER_FIELDS]
    if kind == "keys":
        fields.append(PLAINTEXT_KEY)
    if kind == "gateways":
        fields.extend(CHILDREN)
    return fields


def identity(kind: str, entity: Entity) -> str:
    """The natural identity of an entity within its gateway (within the file for gateways and keys)."""
    if kind == "keys":
        assert isinstance(entity, ApiKey)
        return entity.key_hash
    if kind == "rules":
        assert isinstance(entity, Rule)
        return entity.name or f"{','.join(sorted(entity.methods))} {entity.path}"
    return str(getattr(entity, "name"))


def label(kind: str, entity: Entity) -> str:
    """How a plan names an entity."""
    if kind == "keys":
        assert isinstance(entity, ApiKey)
        return f"{entity.name} ({entity.key_prefix}…)"
    if kind == "rules":
        assert isinstance(entity, Rule)
        route = f"{','.join(sorted(entity.methods))} {entity.path}"
        return f"{entity.name} ({route})" if entity.name else route
    return str(getattr(entity, "name"))


# ------------------------------------------------------------------------------------------------------------
# Unknown fields (the models ignore extras for the admin API's sake; a file is ours: a typo must be an error)
# ------------------------------------------------------------------------------------------------------------


def check_entity_fields(source: Any, kind: str, raw: dict, path: tuple) -> None:
    """Raise a ConfigError for any field of ``raw`` (and, recursively, of its nested models) that the model does
    not have."""
    allowed = entity_fields(kind)
    problems = []
    for name in raw:
        if name not in allowed:
            problems.append(source.problem((*path, name), _unknown(name, allowed, kind), at_key=True))
    model = KINDS[kind].model
    for name, value in raw.items():
        if name in model.model_fields and name not in SERVER_FIELDS:
            problems.extend(_nested(source, model.model_fields[name].annotation, value, (*path, name)))
    if problems:
        raise ConfigError(problems, source=source.name)


def _unknown(name: str, allowed: list[str], kind: str | None = None) -> str:
    hint = ""
    for ref in references(kind) if kind else ():
        if name == ref.field:
            hint = f"; the file names the {KINDS[ref.table].label} instead: {ref.name}: <name>"
    if name in SERVER_FIELDS and not hint:
        hint = "; ids and timestamps are the store's, not the file's"
    return f"unknown field {name!r}{hint} (known: {', '.join(allowed)})"


def _models_in(annotation: Any) -> tuple[list[type[BaseModel]], list[type[BaseModel]], list[type[BaseModel]]]:
    """The models an annotation holds directly, as list items, and as dict values."""
    direct: list[type[BaseModel]] = []
    items: list[type[BaseModel]] = []
    values: list[type[BaseModel]] = []

    def visit(tp: Any, into: list) -> None:
        origin = get_origin(tp)
        if origin is Annotated:
            visit(get_args(tp)[0], into)
        elif origin in (Union, UnionType):
            for arg in get_args(tp):
                visit(arg, into)
        elif origin in (list, tuple, set, frozenset):
            for arg in get_args(tp):
                visit(arg, items)
        elif origin is dict:
            args = get_args(tp)
            if len(args) == 2:
                visit(args[1], values)
        elif isinstance(tp, type) and issubclass(tp, BaseModel):
            into.append(tp)

    visit(annotation, direct)
    return direct, items, values


def _nested(source: Any, annotation: Any, value: Any, path: tuple) -> list[Problem]:
    direct, items, values = _models_in(annotation)
    problems: list[Problem] = []
    if isinstance(value, dict) and direct:
        problems.extend(_check_model(source, direct, value, path))
    elif isinstance(value, list) and items:
        for index, item in enumerate(value):
            if isinstance(item, dict):
                problems.extend(_check_model(source, items, item, (*path, index)))
    if isinstance(value, dict) and values:
        for key, item in value.items():
            if isinstance(item, dict):
                problems.extend(_check_model(source, values, item, (*path, key)))
    return problems


def _check_model(source: Any, models: list[type[BaseModel]], value: dict, path: tuple) -> list[Problem]:
    known: dict[str, Any] = {}
    for model in models:
        for name, info in model.model_fields.items():
            known.setdefault(name, info.annotation)
            if info.alias:
                known.setdefault(info.alias, info.annotation)
    problems = [source.problem((*path, name), _unknown(name, list(known)), at_key=True)
                for name in value if name not in known]
    for name, item in value.items():
        if name in known:
            problems.extend(_nested(source, known[name], item, (*path, name)))
    return problems


# ------------------------------------------------------------------------------------------------------------
# An entity in file form (export and plans)
# ------------------------------------------------------------------------------------------------------------


def file_form(kind: str, entity: Entity, names: dict[str, str], *, defaults: bool) -> dict[str, Any]:
    """The entity as the file writes it: JSON values, no server fields, references by name (``names``: id ->
    name of the referenced entities). ``defaults=False`` leaves out every value equal to its default."""
    data = entity.model_dump(mode="json", exclude=set(SERVER_FIELDS), exclude_defaults=not defaults)
    renames = {ref.field: ref for ref in references(kind)}
    out: dict[str, Any] = {}
    for name, value in data.items():
        ref = renames.get(name)
        if ref is None:
            out[name] = value
        elif value is not None:
            if value not in names:
                label_ = KINDS[kind].label
                raise ConfigError(Problem(dotted((kind, getattr(entity, "id"))),
                                          f"{label_} {getattr(entity, 'name', None) or entity.id!r} references "
                                          f"{KINDS[ref.table].label} {value!r}, which does not exist"))
            out[ref.name] = names[value]
    return out


# ------------------------------------------------------------------------------------------------------------
# JSON Schema of the file
# ------------------------------------------------------------------------------------------------------------


def json_schema() -> dict[str, Any]:
    """A JSON Schema (2020-12) for the file, generated from the models: editors validate and complete with it."""
    from pydantic.json_schema import models_json_schema

    models = [KINDS[kind].model for kind in ("gateways", *CHILDREN)]
    _, top = models_json_schema([(model, "validation") for model in models], ref_template="#/$defs/{model}")
    defs: dict[str, Any] = top.get("$defs", {})
    for schema in defs.values():
        if schema.get("type") == "object" and "properties" in schema:
            schema["additionalProperties"] = False
    for kind in ("gateways", *CHILDREN):
        schema = defs[KINDS[kind].model.__name__]
        for name in SERVER_FIELDS:
            schema["properties"].pop(name, None)
        schema["required"] = [name for name in schema.get("required", []) if name not in SERVER_FIELDS]
        for ref in references(kind):
            _rename_property(schema, ref.field, ref.name)
            if ref.name in schema["properties"]:
                schema["properties"][ref.name] = {
                    "type": "string", "minLength": 1,
                    "description": f"Name of a {KINDS[ref.table].label} of the same gateway"}
        if kind == "keys":
            schema["properties"][PLAINTEXT_KEY] = {
                "type": "string", "minLength": 16,
                "description": "The plaintext key, from the environment (${VAR}); hashed at load, never stored"}
            schema["required"] = [n for n in schema["required"] if n not in ("key_hash", "key_prefix")]
            schema["oneOf"] = [{"required": ["key_hash", "key_prefix"]}, {"required": [PLAINTEXT_KEY]}]
        if kind == "gateways":
            for child in CHILDREN:
                schema["properties"][child] = {"type": "array",
                                               "items": {"$ref": f"#/$defs/{KINDS[child].model.__name__}"}}
        if not schema["required"]:
            schema.pop("required")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "aigw configuration file",
        "description": "Gateways with their upstreams, services, rules and keys; entities refer to each other by "
                       "name. Strings may hold ${VAR} (environment variables).",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "version": {"const": VERSION, "default": VERSION},
            "gateways": {"type": "array", "items": {"$ref": f"#/$defs/{KINDS['gateways'].model.__name__}"}},
        },
        "$defs": defs,
    }


def _rename_property(schema: Any, old: str, new: str) -> None:
    """Rename a property everywhere in one model's schema (its properties, required lists, anyOf branches)."""
    if isinstance(schema, dict):
        props = schema.get("properties")
        if isinstance(props, dict) and old in props:
            schema["properties"] = {(new if k == old else k): v for k, v in props.items()}
        if isinstance(schema.get("required"), list):
            schema["required"] = [new if name == old else name for name in schema["required"]]
        for value in schema.values():
            if isinstance(value, (dict, list)):
                _rename_property(value, old, new)
    elif isinstance(schema, list):
        for item in schema:
            _rename_property(item, old, new)
