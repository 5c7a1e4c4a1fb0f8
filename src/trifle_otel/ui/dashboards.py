"""Dashboards of several stat keys from a YAML file (``ui.dashboards``), in the spirit of
Trifle App's widgets: ``timeseries``, ``category`` and ``kpi``.

```yaml
dashboards:
  - name: Price calculations
    granularity: 1h                 # default bucket size
    range: 1d                       # default: the last day
    variables:                      # optional: one page per customer, chosen from a list
      customer: {from_keys: "prices/calculations/customer/{customer}"}   # or [acme, globex]
    widgets:
      - {type: kpi, title: Calculations, key: "prices/calculations/customer/{customer}", value: count}
      - {type: kpi, title: OK rate, key: prices/calculations, expression: "codes.OK / count * 100", unit: "%"}
      - {type: timeseries, title: States, key: prices/calculations, paths: ["states.*"], stacked: true}
      - {type: timeseries, title: Duration, key: prices/calculations, triple: duration}
      - {type: category, title: Result codes, key: prices/calculations, path: "codes.*"}
```

Everything is checked when the file loads (names, types, expressions, granularities),
and a mistake is reported with the dashboard and widget it is in.  Nothing in the file runs
as code: expressions are arithmetic over value paths.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..errors import ConfigError
from ..stats.granularity import parse_granularity
from ..stats.series import category, expand_path
from ..timeutil import parse_time
from ..yamlfile import parse_yaml, read_text
from ..stats.values import dig, is_number
from .charts import bucket_bound, bucket_label, compile_paths, evaluate, is_bucket, totals
from .format import num

WIDGETS = {
    "timeseries": {"title", "key", "paths", "stacked", "triple"},
    "category": {"title", "key", "path"},
    "kpi": {"title", "key", "value", "expression", "unit"},
}
COMMON = {"type", "title", "key"}
DASHBOARD_FIELDS = {"name", "id", "granularity", "range", "variables", "widgets"}
_VARIABLE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_SLUG = re.compile(r"[^a-z0-9]+")


@dataclass
class Widget:
    type: str
    title: str
    key: str  # may hold {variable}
    spec: dict[str, Any]


@dataclass
class Variable:
    name: str
    values: list[str] = field(default_factory=list)
    from_keys: str | None = None

    def pattern(self) -> re.Pattern:
        """A regex for the keys of ``from_keys`` that captures this variable."""
        assert self.from_keys is not None
        out, pos = "", 0
        for match in _VARIABLE.finditer(self.from_keys):
            out += re.escape(self.from_keys[pos:match.start()])
            out += "(?P<value>[^/]+)" if match.group(1) == self.name else "[^/]+"
            pos = match.end()
        return re.compile("^" + out + re.escape(self.from_keys[pos:]) + "$")


@dataclass
class Dashboard:
    id: str
    name: str
    granularity: str | None
    range: str
    variables: list[Variable]
    widgets: list[Widget]


def _fail(where: str, message: str) -> ConfigError:
    return ConfigError(f"{where}: {message}")


def _string(value: Any, where: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(where, f"'{what}' must be a non-empty string")
    return value.strip()


def load_dashboards(path: str | Path) -> list[Dashboard]:
    path = Path(path)
    text = read_text(path, "dashboards file", missing_hint=": check ui.dashboards in the configuration")
    data = parse_yaml(text, f"dashboards file {path}")
    return parse_dashboards(data, f"dashboards file {path}")


def parse_dashboards(data: Any, where: str) -> list[Dashboard]:
    if isinstance(data, dict):
        unknown = set(data) - {"dashboards"}
        if unknown:
            raise _fail(where, f"unknown top-level entry '{sorted(unknown)[0]}' (the file holds 'dashboards: [...]')")
        data = data.get("dashboards")
    if not isinstance(data, list) or not data:
        raise _fail(where, "expected 'dashboards:' with a list of dashboards")
    out: list[Dashboard] = []
    for i, item in enumerate(data, start=1):
        out.append(_dashboard(item, f"{where}: dashboard #{i}"))
    ids = [d.id for d in out]
    for d in out:
        if ids.count(d.id) > 1:
            raise _fail(where, f"two dashboards have the id '{d.id}': give one an 'id'")
    return out


def _dashboard(item: Any, where: str) -> Dashboard:
    if not isinstance(item, dict):
        raise _fail(where, "a dashboard is a mapping with 'name' and 'widgets'")
    name = _string(item.get("name"), where, "name")
    where = f"{where.rsplit(':', 1)[0]}: dashboard '{name}'"
    unknown = set(item) - DASHBOARD_FIELDS
    if unknown:
        raise _fail(where, f"unknown setting '{sorted(unknown)[0]}' (known: {', '.join(sorted(DASHBOARD_FIELDS))})")
    slug = _string(item["id"], where, "id") if "id" in item else _SLUG.sub("-", name.lower()).strip("-") or "dashboard"
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", slug):
        raise _fail(where, f"'id' must be letters, digits, '-' or '_' (got {slug!r})")
    granularity = item.get("granularity")
    if granularity is not None:
        try:
            granularity = parse_granularity(str(granularity)).text
        except ConfigError as exc:
            raise _fail(where, str(exc)) from None
    range_ = str(item.get("range", "1d"))
    parse_time(range_, what=f"{where}: 'range'")
    variables = _variables(item.get("variables"), where)
    widgets_data = item.get("widgets")
    if not isinstance(widgets_data, list) or not widgets_data:
        raise _fail(where, "'widgets' must be a list of widgets")
    names = {v.name for v in variables}
    widgets = [_widget(w, f"{where}: widget #{i}", names) for i, w in enumerate(widgets_data, start=1)]
    return Dashboard(slug, name, granularity, range_, variables, widgets)


def _variables(data: Any, where: str) -> list[Variable]:
    if data is None:
        return []
    if not isinstance(data, dict):
        raise _fail(where, "'variables' maps a name to a list of values or {from_keys: template}")
    out = []
    for name, spec in data.items():
        name = str(name)
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise _fail(where, f"variable name {name!r} must be letters, digits and underscores")
        if isinstance(spec, list) and spec and all(isinstance(v, (str, int)) for v in spec):
            out.append(Variable(name, [str(v) for v in spec]))
        elif isinstance(spec, dict) and set(spec) == {"from_keys"} and isinstance(spec["from_keys"], str):
            if "{" + name + "}" not in spec["from_keys"]:
                raise _fail(where, f"variable '{name}': from_keys must contain {{{name}}}")
            out.append(Variable(name, from_keys=spec["from_keys"]))
        else:
            raise _fail(where, f"variable '{name}' must be a list of values or {{from_keys: \"a/key/{{{name}}}\"}}")
    return out


def _widget(item: Any, where: str, variables: set[str]) -> Widget:
    if not isinstance(item, dict):
        raise _fail(where, "a widget is a mapping with 'type' and 'key'")
    kind = item.get("type")
    if kind not in WIDGETS:
        raise _fail(where, f"'type' must be one of {', '.join(WIDGETS)} (got {kind!r})")
    unknown = set(item) - WIDGETS[kind] - COMMON
    if unknown:
        raise _fail(where, f"unknown setting '{sorted(unknown)[0]}' for a {kind} widget "
                           f"(known: {', '.join(sorted(WIDGETS[kind] | COMMON))})")
    key = _string(item.get("key"), where, "key")
    for used in _VARIABLE.findall(key):
        if used not in variables:
            raise _fail(where, f"key {key!r} uses {{{used}}}, which is not among the dashboard's variables")
    spec = {k: v for k, v in item.items() if k not in COMMON}
    title = str(item.get("title") or key)
    if kind == "timeseries":
        if ("paths" in spec) == ("triple" in spec):
            raise _fail(where, "a timeseries widget takes either 'paths' (a list) or 'triple' (a path)")
        if "paths" in spec and (not isinstance(spec["paths"], list) or not all(isinstance(p, str) for p in spec["paths"])):
            raise _fail(where, "'paths' must be a list of value paths such as count or codes.*")
        if "triple" in spec:
            _string(spec["triple"], where, "triple")
        if not isinstance(spec.get("stacked", False), bool):
            raise _fail(where, "'stacked' must be true or false")
    elif kind == "category":
        _string(spec.get("path"), where, "path")
    else:
        if ("value" in spec) == ("expression" in spec):
            raise _fail(where, "a kpi widget takes either 'value' (a path) or 'expression'")
        if "value" in spec:
            _string(spec["value"], where, "value")
        else:
            text = _string(spec["expression"], where, "expression")
            try:
                compile_paths(text)
            except ConfigError as exc:
                raise _fail(where, str(exc)) from None
    return Widget(kind, title, key, spec)


# -- rendering ----------------------------------------------------------------------------


def resolve_variables(dashboard: Dashboard, keys_in_use: Sequence[str], chosen: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Each variable's values (listed, or found in the keys in use) and the one shown."""
    out: dict[str, dict[str, Any]] = {}
    for variable in dashboard.variables:
        values = list(variable.values)
        if variable.from_keys:
            pattern = variable.pattern()
            found = {m.group("value") for k in keys_in_use if (m := pattern.match(k))}
            values = sorted(found)
        pick = chosen.get(variable.name)
        if pick not in values:
            pick = values[0] if values else None
        out[variable.name] = {"values": values, "value": pick}
    return out


def fill_key(template: str, variables: dict[str, dict[str, Any]]) -> str | None:
    missing = False

    def replace(match: re.Match) -> str:
        nonlocal missing
        value = variables.get(match.group(1), {}).get("value")
        if value is None:
            missing = True
            return ""
        return str(value)

    key = _VARIABLE.sub(replace, template)
    return None if missing else key


def widget_view(widget: Widget, key: str, series: dict[str, list]) -> dict[str, Any]:
    """What the template shows for one widget, from the key's series."""
    view: dict[str, Any] = {"type": widget.type, "title": widget.title, "key": key}
    values = series["values"]
    if widget.type == "kpi":
        if "expression" in widget.spec:
            result = evaluate(series, widget.spec["expression"])
            view["value"], view["error"] = result.total, result.error
        else:
            found = dig(totals(values), widget.spec["value"])
            view["value"], view["error"] = (found if is_number(found) else None), None
        view["text"] = num(view["value"]) + (str(widget.spec.get("unit") or "") if view["value"] is not None else "")
    elif widget.type == "category":
        path = widget.spec["path"]
        sums = category(series, path)
        whole = sum(sums.values()) or 1
        fixed = path.split("*", 1)[0] if "*" in path else path + "."
        rows = [(name[len(fixed):] if name.startswith(fixed) else name, value, value / whole * 100)
                for name, value in sums.items()]
        if len(rows) >= 2 and all(is_bucket(name) for name, _, _ in rows):  # a distribution: in bucket order
            view["rows"] = [(bucket_label(n), v, s) for n, v, s in sorted(rows, key=lambda r: bucket_bound(r[0]))]
        else:
            view["rows"] = sorted(rows, key=lambda r: -r[1])
    else:
        if "triple" in widget.spec:
            view["chart"] = {"title": widget.title, "kind": "triple", "paths": [widget.spec["triple"]]}
        else:
            paths: list[str] = []
            for path in widget.spec["paths"]:
                for concrete in expand_path(values, path):
                    if concrete not in paths:
                        paths.append(concrete)
            kind = "stacked" if widget.spec.get("stacked") else "lines"
            view["chart"] = {"title": widget.title, "kind": kind, "paths": paths[:24]}
    return view
