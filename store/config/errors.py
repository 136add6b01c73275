"""The one error of config-as-code: what is wrong, and where in the file (line, column, and the entity path)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One problem: a dotted location in the document (``gateways.0.upstreams.1.targets.0.weight``), a message,
    and the 1-based line/column of that location in the file when it is known."""

    loc: str
    msg: str
    line: int | None = None
    column: int | None = None

    def as_detail(self) -> dict:
        detail: dict = {"loc": self.loc or "body", "msg": self.msg}
        if self.line is not None:
            detail["line"] = self.line
            detail["column"] = self.column
        return detail


class ConfigError(Exception):
    """An invalid configuration file, or a plan that cannot be carried out. ``str()`` is one line:
    ``gateway.yaml:14:11: gateways[0].upstreams[0].targets[1].weight: must be >= 0 (and 2 more)``.

    ``status`` is what the admin API answers with (400 for the file, 409 for a conflict with stored state)."""

    def __init__(self, problems: list[Problem] | Problem, *, source: str = "", status: int = 400) -> None:
        self.problems = [problems] if isinstance(problems, Problem) else list(problems)
        assert self.problems, "a ConfigError needs at least one problem"
        self.source = source
        self.status = status
        super().__init__(self.one_line())

    @property
    def first(self) -> Problem:
        return self.problems[0]

    def one_line(self) -> str:
        first = self.first
        where = self.source or "<config>"
        if first.line is not None:
            where = f"{where}:{first.line}:{first.column}"
        loc = f"{readable_loc(first.loc)}: " if first.loc else ""
        more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        return " ".join(f"{where}: {loc}{first.msg}{more}".split())  # one line, whatever the messages hold

    def with_source(self, source: str) -> ConfigError:
        return ConfigError(self.problems, source=source, status=self.status)

    def details(self) -> list[dict]:
        return [problem.as_detail() for problem in self.problems]


def readable_loc(loc: str) -> str:
    """``gateways.0.upstreams.1.name`` -> ``gateways[0].upstreams[1].name``."""
    out = ""
    for part in loc.split(".") if loc else []:
        out += f"[{part}]" if part.isdigit() else (f".{part}" if out else part)
    return out


def dotted(path: tuple) -> str:
    return ".".join(str(part) for part in path)
