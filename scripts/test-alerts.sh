#!/usr/bin/env bash
# Checks the Prometheus alert rules and runs their unit tests with promtool; then, if
# python3 is available, lints the Grafana dashboard and the runbook links.
#   scripts/test-alerts.sh            (from anywhere; exits non-zero on any failure)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

if ! command -v promtool >/dev/null 2>&1; then
  printf '%s\n' >&2 \
    "error: promtool not found in PATH." \
    "  Debian/Ubuntu: apt-get install -y --no-install-recommends prometheus" \
    "  otherwise:     download a Prometheus release from https://prometheus.io/download/" \
    "                 and put its promtool binary in PATH."
  exit 127
fi

shopt -s nullglob
rules=(alerts/*.rules.yaml)
tests=(alerts/tests/*.test.yaml)
if [ ${#rules[@]} -eq 0 ] || [ ${#tests[@]} -eq 0 ]; then
  echo "error: no alerts/*.rules.yaml or alerts/tests/*.test.yaml found under $root" >&2
  exit 1
fi

echo "== promtool check rules"
promtool check rules "${rules[@]}"

echo "== promtool test rules"
# rule_files in a test file are relative to the test file's directory.
(cd alerts/tests && promtool test rules "${tests[@]#alerts/tests/}")

if ! command -v python3 >/dev/null 2>&1; then
  echo "warning: python3 not found: dashboard and runbook checks skipped" >&2
  exit 0
fi

echo "== dashboard and runbook links"
python3 - <<'EOF'
import glob, json, re, sys

errors = []

# Every panel target: an expr selecting pachyderm_cluster="$cluster" (the label the
# program pushes; never `cluster`, the external label of multi-cluster setups), and the
# ${datasource} variable.
DS = {"type": "prometheus", "uid": "${datasource}"}
for path in sorted(glob.glob("dashboards/*.json")):
    d = json.load(open(path))
    names = [v.get("name") for v in d.get("templating", {}).get("list", [])]
    for v in ("datasource", "cluster"):
        if v not in names:
            errors.append(f"{path}: no templating variable {v!r}")
    for v in d.get("templating", {}).get("list", []):
        if v.get("name") == "cluster" and "pachyderm_cluster)" not in str(v.get("query")):
            errors.append(f"{path}: the variable cluster does not list the values of pachyderm_cluster")
    def panels(ps):
        for p in ps:
            yield p
            yield from panels(p.get("panels", []))
    for p in panels(d.get("panels", [])):
        if p.get("type") == "row":
            continue
        title = p.get("title", f"panel {p.get('id')}")
        if not p.get("description"):
            errors.append(f"{path}: {title}: no description")
        if p.get("datasource") != DS:
            errors.append(f"{path}: {title}: panel datasource is not {DS}")
        if not p.get("targets"):
            errors.append(f"{path}: {title}: no targets")
        for t in p.get("targets", []):
            expr = t.get("expr", "")
            if t.get("datasource") != DS:
                errors.append(f"{path}: {title}: target {t.get('refId')} datasource is not {DS}")
            if not expr:
                errors.append(f"{path}: {title}: target {t.get('refId')} has no expr")
            for m in re.finditer(r"\b(pachyderm_backup_\w+)(\{[^}]*\})?", expr):
                if not m.group(2) or not re.search(r'(?<![\w])pachyderm_cluster="\$cluster"', m.group(2)):
                    errors.append(f"{path}: {title}: {m.group(1)} does not select pachyderm_cluster=\"$cluster\"")
                if m.group(2) and re.search(r'(?<![\w])cluster\s*[=!]', m.group(2)):
                    errors.append(f"{path}: {title}: {m.group(1)} selects the label cluster, which the program does not push")

# Every runbook_url anchor: a heading "Alert: <Name>" in README.md.
def slug(heading):
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")
anchors = set()
for doc in ("README.md",):
    try:
        for line in open(doc, encoding="utf-8"):
            m = re.match(r"#+\s+(.*)", line)
            if m:
                anchors.add(slug(m.group(1)))
    except FileNotFoundError:
        pass
for path in sorted(glob.glob("alerts/*.rules.yaml")):
    text = open(path).read()
    alerts = set(re.findall(r"^\s*- alert:\s*(\S+)", text, re.M))
    urls = re.findall(r"runbook_url:\s*\"?([^\"\s]+)", text)
    if len(urls) != len(re.findall(r"^\s*- alert:", text, re.M)):
        errors.append(f"{path}: every alert needs a runbook_url")
    for url in urls:
        anchor = url.split("#", 1)[-1]
        if anchor not in anchors:
            errors.append(f"{path}: runbook anchor #{anchor} has no heading in README.md")
    for a in alerts:
        if f"alert-{a.lower()}" not in anchors:
            errors.append(f"{path}: no runbook section '## Alert: {a}'")
    # Only the series this version pushes (pachyderm_cluster), never the label `cluster`
    # of older versions, which multi-cluster setups use as an external label.
    exprs = re.findall(r"^(\s*)expr:\s*\|[-+]?\n((?:\1\s+\S.*\n|\s*\n)+)", text, re.M)
    if len(exprs) != len(re.findall(r"^\s*expr:", text, re.M)):
        errors.append(f"{path}: write every expr as a block (expr: |) for this check")
    for _, expr in exprs:
        for m in re.finditer(r"\b(pachyderm_backup_\w+)(\{[^}]*\})?", expr):
            if not m.group(2) or 'pachyderm_cluster!=""' not in m.group(2):
                errors.append(f"{path}: {m.group(0)} does not require pachyderm_cluster!=\"\"")
    for bad in re.findall(r"\b(?:on|ignoring|by|without)\s*\([^)]*\bcluster\b[^)]*\)|\$labels\.cluster\b", text):
        errors.append(f"{path}: {bad}: the label is pachyderm_cluster")

for e in errors:
    print("error:", e, file=sys.stderr)
if errors:
    sys.exit(1)
print("  SUCCESS")
EOF
