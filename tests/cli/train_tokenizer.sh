#!/usr/bin/env bash
# deltamoe train-tokenizer: a tokenizer.json from a text file that `tokenize` then uses, the
# --json report, and one-line errors for bad values and paths. No timing assertions.
set -euo pipefail
bin="$1"
src="$2"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
source "$src/tests/cli/error_lib.bash"

for i in $(seq 1 40); do printf 'The cat %d sat on the mat.\nThe dog ate the hat.\n\n' "$i"; done >"$tmp/corpus.txt"
"$bin" train-tokenizer --data "$tmp/corpus.txt" --vocab 300 --out "$tmp/tok.json" --json >"$tmp/r.json"
for key in out source train_documents validation_documents test_documents train_bytes \
           distinct_words vocab_size merges validation_bytes_per_token time_s; do
  grep -q "\"$key\": " "$tmp/r.json" || fail "no $key"
done
grep -q '"train_documents": 32,' "$tmp/r.json" || fail "not 32 training documents of 40"
[ -s "$tmp/tok.json" ] || fail "no tokenizer.json"
[ ! -e "$tmp/tok.json.tmp" ] || fail "temp file left"
# `tokenize` loads it; the text round-trips.
"$bin" tokenize --model "$tmp/tok.json" --text "The cat sat on the hat." --json >"$tmp/t.json"
grep -q '"ids"' "$tmp/t.json" || fail "tokenize gave no ids"

expect_one_line_error 2 "vocab" "$bin" train-tokenizer --data "$tmp/corpus.txt" --vocab 100 --out "$tmp/x.json"
expect_one_line_error 1 "cannot read" "$bin" train-tokenizer --data "$tmp/missing.txt" --out "$tmp/x.json"
expect_one_line_error 1 "train-tokenizer" "$bin" train-tokenizer --data "$tmp/corpus.txt" --out "$tmp/corpus.txt/x.json"
[ ! -e "$tmp/x.json" ] || fail "output written on error"
echo "train-tokenizer: ok"
