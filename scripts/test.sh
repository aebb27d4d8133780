#!/usr/bin/env bash
# The whole check: lint, types, and the three test tiers against a real Kafka and PostgreSQL.
#
# Installs the PostgreSQL server (and Java/Maven for the local broker) when missing and root,
# starts the local services unless LOCATOR_KAFKA_BOOTSTRAP / LOCATOR_POSTGRES_DSN point at
# external ones, and stops on exit only the services this script started. Every step runs even
# when an earlier one failed; the exit status is non-zero if any failed.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

BIN="${VENV_BIN:-.venv/bin}"
OUT="out/test"
TIERS=(unit integration e2e)

if [[ ! -x "$BIN/eshram-locator" ]]; then
    echo "test.sh: $BIN/eshram-locator missing; run 'make setup' (or 'make test')" >&2
    exit 1
fi

as_root() { [[ "$(id -u)" == 0 ]]; }
apt_updated=0
apt_install() {
    if ! as_root; then
        echo "test.sh: $* missing and not root: install it (apt-get install $*)" >&2
        exit 1
    fi
    if [[ $apt_updated == 0 ]]; then
        apt-get update -q || exit 1
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" || exit 1
}

if [[ -z "${LOCATOR_POSTGRES_DSN:-}" ]] && ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    apt_install postgresql
fi
if [[ -z "${LOCATOR_KAFKA_BOOTSTRAP:-}" ]]; then
    command -v java >/dev/null || apt_install default-jre-headless
    command -v mvn >/dev/null || apt_install maven
fi

# A broker this script starts gives each new consumer group its partitions at once: every test's
# group is new, and Kafka's default initial rebalance delay would make each wait 3 s.
export LOCATOR_KAFKA_INITIAL_REBALANCE_DELAY_MS="${LOCATOR_KAFKA_INITIAL_REBALANCE_DELAY_MS:-0}"

# --- services: remember what was already running, stop only what we start ------------------
before="$("$BIN/eshram-locator" services status)" || exit $?
started=()
grep -q '^kafka: stopped' <<<"$before" && started+=(kafka)
grep -q '^postgres: stopped' <<<"$before" && started+=(postgres)

stop_started() {
    if ((${#started[@]})); then
        echo "== stopping the services this run started: ${started[*]}"
        "$BIN/eshram-locator" services down "${started[@]}" || true
    fi
}
trap stop_started EXIT

echo "== services up"
"$BIN/eshram-locator" services up || exit $?

# --- checks --------------------------------------------------------------------------------
failed=()
step() {
    local name="$1"
    shift
    echo "== $name"
    "$@" || failed+=("$name")
}

step "ruff" "$BIN/ruff" check .
step "mypy" "$BIN/mypy"

rm -rf "$OUT" && mkdir -p "$OUT"
empty=0
for tier in "${TIERS[@]}"; do
    echo "== pytest tests/$tier"
    "$BIN/pytest" "tests/$tier" --junitxml="$OUT/$tier.xml"
    rc=$?
    if [[ $rc == 5 ]]; then
        echo "(no tests collected in tests/$tier)"
        empty=$((empty + 1))
    elif [[ $rc != 0 ]]; then
        failed+=("pytest tests/$tier")
    fi
done
if [[ $empty == "${#TIERS[@]}" ]]; then
    failed+=("pytest: no test collected in any tier")
fi

# One closing line over all tiers (the per-tier summaries are above).
"$BIN/python" - "$OUT" <<'PY'
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

totals = dict(tests=0, failures=0, errors=0, skipped=0)
for report in sorted(Path(sys.argv[1]).glob("*.xml")):
    for suite in ET.parse(report).getroot().iter("testsuite"):
        for key in totals:
            totals[key] += int(suite.get(key, 0))
passed = totals["tests"] - totals["failures"] - totals["errors"] - totals["skipped"]
failed = totals["failures"] + totals["errors"]
print(f"tests: {passed} passed, {failed} failed, {totals['skipped']} skipped")
PY

if ((${#failed[@]})); then
    echo "FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "OK"
