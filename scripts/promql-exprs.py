#!/usr/bin/env python3
"""Prints every PromQL expression of the warmpool dashboard and alert rules, one a line.

Used by the integration test, which runs each one against a real Prometheus, so that a
renamed metric or a broken query in dashboards/ fails a test instead of a dashboard.

Grafana variables are replaced so that the result is plain PromQL: $pool (also ${pool},
[[pool]]) by .+ and $__rate_interval by 1m; the ${datasource} variable only names the data
source and never appears in an expression. The pool variable's label_values(METRIC, LABEL)
query is printed as METRIC, so that its metric is checked too.

The alert file is read line by line (PyYAML may be missing): every `expr:` must hold its
whole expression on one line, plain, 'single-' or "double-quoted". Block scalars (| or >)
are refused with an error rather than silently skipped.

Usage: promql-exprs.py [--with-source] [DASHBOARD.json] [ALERTS.yml]
Defaults are dashboards/warmpool.json and dashboards/alerts.yml next to this script's
parent directory. Exit status 1 on any problem (message on stderr).
"""

import json
import os
import re
import sys

SUBSTITUTIONS = [
    (re.compile(r"\$\{pool(?::[a-z]+)?\}|\[\[pool\]\]|\$pool\b"), ".+"),
    (re.compile(r"\$\{__rate_interval\}|\$__rate_interval\b"), "1m"),
]
LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(.+?)\s*,\s*[A-Za-z_][A-Za-z0-9_]*\s*\)\s*$")
EXPR_LINE = re.compile(r"^\s*(?:-\s+)?expr:\s*(.*?)\s*$")


class Problem(Exception):
    pass


def substitute(expr):
    for pattern, value in SUBSTITUTIONS:
        expr = pattern.sub(value, expr)
    leftover = re.search(r"\$\{?[A-Za-z_]\w*\}?|\[\[\w+\]\]", expr)
    if leftover:
        raise Problem(f"unknown variable {leftover.group(0)} in: {expr}")
    return expr.strip()


def walk_panels(panels):
    for panel in panels or []:
        yield panel
        # rows (collapsed or not) may hold their panels inside
        yield from walk_panels(panel.get("panels"))


def dashboard_exprs(path):
    with open(path, encoding="utf-8") as f:
        dashboard = json.load(f)
    out = []
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        query = var.get("query")
        if isinstance(query, dict):
            query = query.get("query", "")
        match = LABEL_VALUES.match(query or "")
        if match:
            out.append(match.group(1))
        elif query:
            raise Problem(f"{path}: variable {var.get('name')}: unsupported query {query!r}")
    for panel in walk_panels(dashboard.get("panels")):
        for target in panel.get("targets") or []:
            expr = target.get("expr")
            if expr and not target.get("hide"):
                out.append(expr)
    return out


def yaml_scalar(raw, where):
    """The value of a one-line YAML scalar: plain, single- or double-quoted."""
    if raw in ("", "|", ">") or raw[0] in "|>" and re.fullmatch(r"[|>][-+0-9]*", raw):
        raise Problem(f"{where}: expr must be on one line (no block scalar)")
    if raw.startswith("'"):
        if not raw.endswith("'") or len(raw) < 2:
            raise Problem(f"{where}: unterminated single-quoted expr")
        return raw[1:-1].replace("''", "'")
    if raw.startswith('"'):
        if not raw.endswith('"') or len(raw) < 2:
            raise Problem(f"{where}: unterminated double-quoted expr")
        # JSON escapes are a subset of YAML's; enough for PromQL strings
        return json.loads(raw)
    # plain scalar: a comment starts at " #"
    return re.split(r"\s+#", raw, maxsplit=1)[0]


def alert_exprs(path):
    out = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.lstrip().startswith("#"):
                continue
            match = EXPR_LINE.match(line)
            if match:
                out.append(yaml_scalar(match.group(1), f"{path}:{number}"))
    if not out:
        raise Problem(f"{path}: no expr: lines found")
    return out


def main(argv):
    with_source = "--with-source" in argv
    args = [a for a in argv if a != "--with-source"]
    if any(a.startswith("-") for a in args) or len(args) > 2:
        print(__doc__, file=sys.stderr)
        return 2
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    dashboard = args[0] if len(args) > 0 else os.path.join(root, "dashboards", "warmpool.json")
    alerts = args[1] if len(args) > 1 else os.path.join(root, "dashboards", "alerts.yml")
    seen = set()
    try:
        for source, exprs in ((dashboard, dashboard_exprs(dashboard)),
                              (alerts, alert_exprs(alerts))):
            for expr in exprs:
                expr = substitute(expr)
                if expr in seen:
                    continue
                seen.add(expr)
                print(f"{os.path.basename(source)}\t{expr}" if with_source else expr)
    except (OSError, ValueError, Problem) as e:
        print(f"promql-exprs: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
