#!/usr/bin/env bash
# Runs each test tree in the environment it belongs to and prints one closing line.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venvs="${WALAR_VENVS:-$root/.venv}"
cd "$root"
passed=0; failed=0; skipped=0; status=0
echo "=== ruff check (.venv/trainer) ==="
"$venvs/trainer/bin/python" -m ruff check . || status=1
for pair in trainer:tests/walar_jax reward:tests/reward rollout:tests/rollout; do
  role="${pair%%:*}"; dir="${pair#*:}"
  [ -d "$dir" ] || continue
  echo "=== $dir (.venv/$role) ==="
  log=$(mktemp)
  "$venvs/$role/bin/python" -m pytest "$dir" -q -p no:cacheprovider "$@" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  line=$(grep -E "^=*\s*[0-9]+ (passed|failed|error|skipped)|no tests ran" "$log" | tail -1)
  p=$(grep -oE "[0-9]+ passed" <<<"$line" | cut -d' ' -f1); passed=$((passed + ${p:-0}))
  f=$(grep -oE "[0-9]+ (failed|error)" <<<"$line" | awk '{s+=$1} END {print s+0}'); failed=$((failed + f))
  s=$(grep -oE "[0-9]+ skipped" <<<"$line" | cut -d' ' -f1); skipped=$((skipped + ${s:-0}))
  # 5 = no tests collected (e.g. a filter matched nothing in this tree): not a failure
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; then status=1; fi
  rm -f "$log"
done
echo "${passed} passed, ${failed} failed, ${skipped} skipped"
exit $status
