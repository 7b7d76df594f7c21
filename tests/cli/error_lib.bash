# Shared helper of the CLI error tests (sourced; named .bash so that CTest, which runs every
# tests/cli/*.sh, does not run it as a test). Needs $tmp and fail().
# expect_one_line_error RC PATTERN CMD...: CMD exits with RC, prints exactly one line on stderr
# matching the grep pattern PATTERN, and nothing on stdout.
expect_one_line_error() {
  local want="$1" pattern="$2"; shift 2
  local rc=0
  "$@" >"$tmp/out.txt" 2>"$tmp/err.txt" || rc=$?
  [ "$rc" -eq "$want" ] || { cat "$tmp/err.txt"; fail "exit $rc, not $want: $*"; }
  [ "$(wc -l <"$tmp/err.txt")" -eq 1 ] || { cat "$tmp/err.txt"; fail "not one line: $*"; }
  grep -q -- "$pattern" "$tmp/err.txt" || { cat "$tmp/err.txt"; fail "no '$pattern' in the error: $*"; }
  [ ! -s "$tmp/out.txt" ] || fail "stdout not empty: $*"
}
