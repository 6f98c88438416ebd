#!/usr/bin/env bash
# Gates for the telerad.access policy. Run from anywhere:
#   policies/check.sh
#   OPA=/path/to/opa REGAL=/path/to/regal policies/check.sh
# Needs: opa (v1.22.3), regal (v0.39.0), python3; jsonschema (Python) optional.
set -euo pipefail

OPA="${OPA:-$HOME/.cache/telerad/bin/opa}"
REGAL="${REGAL:-$HOME/.cache/telerad/bin/regal}"
MIN_COVERAGE="${MIN_COVERAGE:-90}"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

step() { printf '\n==> %s\n' "$*"; }
die() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

for tool in "$OPA" "$REGAL"; do
  [[ -x "$tool" ]] || die "$tool not found or not executable (set OPA / REGAL)"
done
command -v python3 >/dev/null || die "python3 is required"

step "tools"
echo "repo root: $ROOT"
"$OPA" version | sed -n '1p'
"$REGAL" version | sed -n '1p'

step "1/6 opa fmt --list --fail policies"
"$OPA" fmt --list --fail policies || die "files above need 'opa fmt -w policies'"
echo "formatting ok"

step "2/6 opa check --strict --capabilities policies/capabilities.json policies/"
python3 - policies/capabilities.json <<'PY'
import json, sys
forbidden = {"http.send", "net.lookup_ip_addr", "opa.runtime"}
present = forbidden & {b["name"] for b in json.load(open(sys.argv[1]))["builtins"]}
if present:
    sys.exit(f"capabilities.json still allows {sorted(present)}")
print(f"capabilities.json excludes {sorted(forbidden)}")
PY
"$OPA" check --strict --capabilities policies/capabilities.json policies/
echo "check ok"

step "3/6 opa test policies/ --coverage (minimum ${MIN_COVERAGE}%)"
test_rc=0
"$OPA" test policies/ --var-values || test_rc=$?
"$OPA" test policies/ --format json >"$TMP/results.json" || true
python3 - "$TMP/results.json" <<'PY'
import json, sys
try:
    results = json.load(open(sys.argv[1]))
except ValueError:
    sys.exit("opa test produced no JSON results (see the errors above)")
failed = [r for r in results if r.get("fail") or r.get("error")]
passed = [r for r in results if not (r.get("fail") or r.get("error") or r.get("skip"))]
for r in failed:
    print(f"failed: {r['package']}.{r['name']} ({r['location']['file']}:{r['location']['row']})")
print(f"{len(passed)} passed, {len(failed)} failed")
PY
[[ $test_rc -eq 0 ]] || die "opa test failed"
"$OPA" test policies/ --coverage --format json >"$TMP/coverage.json"
python3 - "$TMP/coverage.json" "$MIN_COVERAGE" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
minimum = float(sys.argv[2])
for name, info in sorted(report.get("files", {}).items()):
    missed = ", ".join(
        f"{r['start']['row']}-{r['end']['row']}" for r in info.get("not_covered", [])
    )
    print(f"  {info.get('coverage', 0):6.2f}%  {name}" + (f"  (not covered: lines {missed})" if missed else ""))
total = float(report.get("coverage", 0))
# OPA counts test files too; gate on the policy modules alone as well
policy = [i for n, i in report.get("files", {}).items() if not n.endswith("_test.rego")]
covered = sum(i.get("covered_lines", 0) for i in policy)
missed = sum(i.get("not_covered_lines", 0) for i in policy)
policy_cov = 100.0 * covered / (covered + missed) if covered + missed else 0.0
print(f"total coverage: {total:.2f}%, policy files only: {policy_cov:.2f}% (minimum {minimum:g}%)")
if min(total, policy_cov) < minimum:
    sys.exit(f"coverage below {minimum:g}%")
PY

step "4/6 regal lint policies/"
"$REGAL" lint --config-file policies/.regal/config.yaml --fail-level warning policies/
echo "lint ok"

step "5/6 JSON Schema validation of policies/data/ and policies/examples/"
if python3 -c 'import jsonschema' 2>/dev/null; then
  python3 - <<'PY'
import json, pathlib, sys
from jsonschema import Draft202012Validator as Validator

def load(path):
    with open(path) as handle:
        return json.load(handle)

def validate(schema_path, directory):
    schema = load(schema_path)
    Validator.check_schema(schema)
    validator = Validator(schema)
    files = sorted(pathlib.Path(directory).rglob("*.json"))
    if not files:
        sys.exit(f"no JSON files under {directory}")
    bad = 0
    for path in files:
        errors = sorted(validator.iter_errors(load(path)), key=lambda e: list(e.absolute_path))
        for error in errors:
            location = "/".join(str(p) for p in error.absolute_path) or "(root)"
            print(f"  {path}: {location}: {error.message}")
        bad += bool(errors)
        print(f"  {'ok  ' if not errors else 'FAIL'} {path} against {schema_path}")
    return bad

failures = validate("policies/schemas/data.schema.json", "policies/data")
failures += validate("policies/schemas/input.schema.json", "policies/examples")
sys.exit(1 if failures else 0)
PY
else
  echo "SKIPPED: Python package 'jsonschema' is not installed (pip install jsonschema)"
fi

step "6/6 smoke: sample data + example input give an allow"
allow="$("$OPA" eval --format raw \
  --capabilities policies/capabilities.json \
  -d policies/telerad -d policies/data/data.json \
  -i policies/examples/issue_link.json \
  'data.telerad.access.decision.allow')"
[[ "$allow" == "true" ]] || die "policies/examples/issue_link.json is not allowed with policies/data/data.json"
"$OPA" eval --format pretty \
  -d policies/telerad -d policies/data/data.json \
  -i policies/examples/issue_link.json \
  'data.telerad.access.decision'

printf '\nAll policy checks passed.\n'
