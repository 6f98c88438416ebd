#!/usr/bin/env bash
# The Helm chart's checks from a shell: helm lint and template of every ci/ scenario, the README's
# values table, then the chart's pytest suite (kubernetes-validate, checkov, the Settings drift
# test, real OPA on the sidecar's arguments, the Dockerfile's invariants).
#
#   scripts/helm-check.sh            everything
#   scripts/helm-check.sh -k drift   extra arguments go to pytest
#
# helm is built into ~/.cache/telerad on first use (Go module proxy), checkov installed into its
# own venv there (it cannot share the project's venv: it pins packaging<24).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
KUBE_VERSION=${KUBE_VERSION:-1.31.0}
CHART=helm/telerad-broker
HELM=$("$PYTHON" -c 'from devstack.provision import go_tool; print(go_tool("helm"))')

for values in "$CHART"/ci/*-values.yaml; do
  echo "== helm lint + template: $values"
  "$HELM" lint "$CHART" --strict --namespace telerad --kube-version "$KUBE_VERSION" --values "$values"
  "$HELM" template telerad-broker "$CHART" --namespace telerad --kube-version "$KUBE_VERSION" \
    --values "$values" > /dev/null
done
echo "== values table"
"$PYTHON" helm/tools/gen_values_table.py --check
echo "== pytest tests/helm"
"$PYTHON" -m pytest tests/helm -q "$@"
