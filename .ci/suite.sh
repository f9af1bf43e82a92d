# Sourced by .ci/run: `suite NAME COMMAND...` runs one CI suite, timed; `print_timings` lists them.
# The first failing suite stops CI (set -e in .ci/run) after printing the timings so far.
_CI_START=$(date +%s)
_CI_TIMES=()

print_timings() {
  echo
  echo "== CI timings (seconds)"
  local line
  for line in "${_CI_TIMES[@]}"; do echo "  $line"; done
  echo "  total $(( $(date +%s) - _CI_START ))"
}

suite() {
  local name=$1; shift
  local start rc=0
  start=$(date +%s)
  echo
  echo "== suite $name: $*"
  "$@" || rc=$?
  _CI_TIMES+=("$(printf '%-24s %6d %s' "$name" $(( $(date +%s) - start )) "$([ $rc = 0 ] && echo ok || echo "FAILED ($rc)")")")
  if [ $rc != 0 ]; then
    print_timings
    exit $rc
  fi
}
