"""Holds the Grafana dashboard and the alert rules to grantd's real metric names and labels.

deploy/metrics.txt lists every metric (name, type, label names). This checks that:
- deploy/grafana/grantd.json parses, is a dashboard (title, uid, unique panel ids, each query
  panel with targets), and every query in it names only listed metrics, with listed labels;
- every expr in deploy/prometheus/alerts.yaml does the same;
- with `--promtool PATH`, every panel query parses as PromQL (Grafana's variables substituted);
- with `--exposition FILE` (a scrape of /_grantd/metrics), every metric family grantd exposes is
  listed with its type, every sample's labels are listed; with `--complete` also, every listed
  metric is exposed.

A misspelt metric or label in a panel or an alert shows no data and raises no alarm, silently;
this makes it a CI failure instead.

Usage: metrics.py [--exposition FILE [--complete]]
"""

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CONTRACT = ROOT / "deploy/metrics.txt"
DASHBOARD = ROOT / "deploy/grafana/grantd.json"
ALERTS = ROOT / "deploy/prometheus/alerts.yaml"
# Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"instance", "job"}
SELECTOR = re.compile(r"\b(grantd_[A-Za-z0-9_:]*)\s*(\{[^}]*\})?")
MATCHER_LABEL = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
# Dashboard keys whose string values are PromQL.
QUERY_KEYS = ("expr", "query", "definition")
# Grafana's variables, replaced by what Grafana would send, so promtool can parse the queries.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$integration": ".*"}


def load_contract() -> dict:
    """Series name → (metric, label names), histograms expanded to _bucket/_sum/_count."""
    series = {}
    for number, line in enumerate(CONTRACT.read_text().splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if len(words) < 2 or words[1] not in ("counter", "gauge", "histogram"):
            sys.exit(f"FAIL {CONTRACT.relative_to(ROOT)}:{number}: expected `name counter|gauge|histogram labels...`")
        name, kind, labels = words[0], words[1], set(words[2:])
        if kind == "counter" and not name.endswith("_total"):
            sys.exit(f"FAIL {CONTRACT.relative_to(ROOT)}:{number}: a counter's name ends in _total")
        if kind == "histogram":
            series[name + "_bucket"] = (name, kind, labels | {"le"})
            series[name + "_sum"] = (name, kind, labels)
            series[name + "_count"] = (name, kind, labels)
        else:
            series[name] = (name, kind, labels)
    return series


def check_expr(expr: str, contract: dict, where: str) -> list:
    """Problems with one PromQL expression: unknown metrics, unknown labels."""
    problems = []
    found = SELECTOR.findall(expr)
    if not found:
        return [f"{where}: names no grantd metric: {expr.strip()}"]
    known_labels = set(TARGET_LABELS)
    for name, matchers in found:
        if name not in contract:
            problems.append(f"{where}: unknown metric {name}")
            continue
        labels = contract[name][2]
        known_labels |= labels
        for label in MATCHER_LABEL.findall(matchers or ""):
            if label not in labels | TARGET_LABELS:
                problems.append(f"{where}: {name} has no label `{label}`")
    for group in GROUPING.findall(expr):
        for label in filter(None, (l.strip() for l in group.split(","))):
            if label not in known_labels:
                problems.append(f"{where}: groups by `{label}`, which none of its metrics has")
    return problems


def queries(node, path="$"):
    """Every (path, PromQL string) under the dashboard's query keys."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in QUERY_KEYS and isinstance(value, str) and "grantd_" in value:
                yield f"{path}.{key}", value
            else:
                yield from queries(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from queries(value, f"{path}[{i}]")


def check_dashboard(contract: dict) -> list:
    where = DASHBOARD.relative_to(ROOT)
    try:
        dash = json.loads(DASHBOARD.read_text())
    except json.JSONDecodeError as e:
        return [f"{where}: not JSON: {e}"]
    problems = [f"{where}: no `{k}`" for k in ("title", "uid", "panels", "schemaVersion") if k not in dash]
    ids = [p.get("id") for p in dash.get("panels", [])]
    if len(ids) != len(set(ids)) or None in ids:
        problems.append(f"{where}: panel ids must be present and unique")
    for panel in dash.get("panels", []):
        if panel.get("type") == "row":
            continue
        targets = panel.get("targets") or []
        refs = [t.get("refId") for t in targets]
        if not targets or len(refs) != len(set(refs)) or not all(t.get("expr") for t in targets):
            problems.append(f"{where}: panel {panel.get('title')!r} needs targets with unique refIds and an expr")
    for path, expr in queries(dash):
        problems += check_expr(expr, contract, f"{where} {path}")
    return problems


def check_syntax(promtool: str) -> list:
    """Parses every panel query with Prometheus's own parser (as recording rules, promtool's input)."""
    dash = json.loads(DASHBOARD.read_text())
    rules = []
    for path, expr in queries(dash):
        if path.endswith(".expr"):
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            rules.append({"record": f"dashboard:query_{len(rules)}", "expr": expr, "labels": {"path": path}})
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, f)
        f.flush()
        result = subprocess.run([promtool, "check", "rules", f.name], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        where = [rules[int(i)]["labels"]["path"] for i in re.findall(r"dashboard:query_(\d+)", result.stdout + result.stderr)]
        return [f"{DASHBOARD.relative_to(ROOT)} {', '.join(where)}: promtool cannot parse it:\n{result.stdout}{result.stderr}"]
    return []


def check_alerts(contract: dict) -> list:
    where = ALERTS.relative_to(ROOT)
    problems = []
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        for rule in group["rules"]:
            name = rule.get("alert") or rule.get("record")
            problems += check_expr(rule["expr"], contract, f"{where} {name}")
    return problems


def check_exposition(path: Path, contract: dict, complete: bool) -> list:
    """Families in a real scrape against the list (OpenMetrics names counters without _total)."""
    exposed, problems = {}, set()
    for line in path.read_text().splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(maxsplit=3)
            exposed[family] = kind.strip()
        elif line and not line.startswith("#"):
            name, _, rest = line.partition("{")
            labels = set(re.findall(r'([A-Za-z_][A-Za-z0-9_]*)="', rest.partition("}")[0]))
            if name in contract and not labels <= contract[name][2]:
                problems.add(f"exposition: {name} has labels {sorted(labels - contract[name][2])} not in deploy/metrics.txt")
    listed = {}
    for name, kind, _ in contract.values():
        listed[name.removesuffix("_total") if kind == "counter" else name] = kind
    problems = sorted(problems) + [
        f"exposition: {family} ({kind}) is not in deploy/metrics.txt"
        for family, kind in sorted(exposed.items())
        if listed.get(family) != kind
    ]
    if complete:
        problems += [f"exposition: {family} is listed but grantd does not expose it" for family in sorted(listed.keys() - exposed.keys())]
    if not exposed:
        problems.append(f"exposition: no `# TYPE` lines in {path}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exposition", type=Path, help="a scrape of grantd's /_grantd/metrics")
    parser.add_argument("--complete", action="store_true", help="every listed metric must be exposed")
    parser.add_argument("--promtool", help="parse the dashboard's queries with this promtool")
    args = parser.parse_args()
    contract = load_contract()
    problems = check_dashboard(contract) + check_alerts(contract)
    if args.promtool and not problems:
        problems += check_syntax(args.promtool)
    if args.exposition:
        problems += check_exposition(args.exposition, contract, args.complete)
    for p in problems:
        print(f"FAIL {p}", file=sys.stderr)
    if not problems:
        checked = "dashboard, alert rules" + (" and exposition" if args.exposition else "")
        print(f"ok   {checked} use only the metrics and labels in deploy/metrics.txt")
        if args.promtool:
            print("ok   every dashboard query parses (promtool)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
