#!/usr/bin/env bash
# Copy the alert rules, the Grafana dashboards and the values table into the Helm chart.
#
# Helm cannot read files outside a chart's directory and symlinks do not survive
# `helm package` reliably, so the chart ships copies under
# helm/pachyderm-backup/files/. alerts/ and dashboards/ stay the source of truth;
# tests/chart/test_chart.py fails when the copies differ.
#
#   scripts/sync-chart-files.sh           copy (and remove stale copies)
#   scripts/sync-chart-files.sh --check   exit 1 if the copies are not identical
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$root/helm/pachyderm-backup/files"
check=false
case "${1:-}" in
  --check) check=true ;;
  "") ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

shopt -s nullglob
sources=("$root"/alerts/*.rules.yaml "$root"/dashboards/*.json)
if [ ${#sources[@]} -eq 0 ]; then
  echo "no alerts/*.rules.yaml or dashboards/*.json found under $root" >&2
  exit 1
fi

mkdir -p "$dest"
status=0
declare -A wanted=()
for src in "${sources[@]}"; do
  name="$(basename "$src")"
  wanted["$name"]=1
  if $check; then
    if ! cmp -s "$src" "$dest/$name"; then
      echo "differs: ${src#"$root"/} vs ${dest#"$root"/}/$name" >&2
      status=1
    fi
  elif ! cmp -s "$src" "$dest/$name"; then
    cp "$src" "$dest/$name"
    echo "copied ${src#"$root"/} -> ${dest#"$root"/}/$name"
  fi
done

# Copies whose source is gone.
for copy in "$dest"/*.rules.yaml "$dest"/*.json; do
  name="$(basename "$copy")"
  if [ -z "${wanted[$name]:-}" ]; then
    if $check; then
      echo "stale: ${copy#"$root"/} has no source" >&2
      status=1
    else
      rm -f "$copy"
      echo "removed stale ${copy#"$root"/}"
    fi
  fi
done

# The values table travels with the packaged chart: docs/CHART.md's "## Values"
# section, copied below the marker of the chart's README.
readme="$root/helm/pachyderm-backup/README.md"
marker='<!-- values: copied from docs/CHART.md by scripts/sync-chart-files.sh; edit them there -->'
values="$(awk '/^## Values$/{on=1} on && /^## / && !/^## Values$/{exit} on' "$root/docs/CHART.md")"
head="$(awk -v m="$marker" '$0 == m {exit} {print}' "$readme")"
wanted_readme="$(printf '%s\n\n%s\n\n%s\n' "${head%$'\n'}" "$marker" "$values")"
if [ "$(cat "$readme")" != "$wanted_readme" ]; then
  if $check; then
    echo "differs: the Values section of ${readme#"$root"/} vs docs/CHART.md" >&2
    status=1
  else
    printf '%s\n' "$wanted_readme" > "$readme"
    echo "copied the Values section of docs/CHART.md -> ${readme#"$root"/}"
  fi
fi

if $check && [ $status -ne 0 ]; then
  echo "run scripts/sync-chart-files.sh" >&2
fi
exit $status
