#!/usr/bin/env bash
# deltamoe tokenize: ids and pieces, --json, --decode round trip, --no-special, the synthetic
# tokenizer, and one-line errors with a non-zero exit.
set -euo pipefail
bin="$1"
src="$2"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
jget() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))" "$@"; }

mkdir -p "$tmp/mixtral" "$tmp/spm"
zcat "$src/tests/golden/tokenizer/mixtral.tokenizer.json.gz" >"$tmp/mixtral/tokenizer.json"
zcat "$src/tests/golden/tokenizer/mixtral.tokenizer.model.gz" >"$tmp/spm/tokenizer.model"

# Same ids from tokenizer.json and tokenizer.model (values checked against HF in test_tokenizer).
for m in mixtral spm; do
  "$bin" tokenize --model "$tmp/$m" --text "Hello world" --json >"$tmp/$m.json"
  [ "$(jget "$tmp/$m.json" "d['ids']")" = "[1, 22557, 1526]" ] || { echo "$m ids"; cat "$tmp/$m.json"; exit 1; }
  [ "$(jget "$tmp/$m.json" "d['pieces']")" = "['<s>', '▁Hello', '▁world']" ] || { echo "$m pieces"; exit 1; }
  for key in model kind vocab_size bos_id eos_id ids pieces count; do
    [ "$(jget "$tmp/$m.json" "'$key' in d")" = True ] || { echo "missing $key"; exit 1; }
  done
done
"$bin" tokenize --model "$tmp/mixtral" --text "Hello world" --no-special --json >"$tmp/ns.json"
[ "$(jget "$tmp/ns.json" "d['ids']")" = "[22557, 1526]" ] || { echo "--no-special"; exit 1; }
# Plain output: one "id -> 'piece'" line per token.
"$bin" tokenize --model "$tmp/mixtral" --text "Hello" 2>/dev/null | grep -q "22557 -> '▁Hello'" || { echo "plain"; exit 1; }
printf 'Line one\n\ttabbed\n' >"$tmp/in.txt"
"$bin" tokenize --model "$tmp/spm" --file "$tmp/in.txt" --json >"$tmp/f.json"
ids=$(jget "$tmp/f.json" "','.join(map(str, d['ids']))")
"$bin" tokenize --model "$tmp/spm" --decode "$ids" --json >"$tmp/d.json"
[ "$(jget "$tmp/d.json" "d['text'] == open('$tmp/in.txt').read()")" = True ] || { echo "round trip"; cat "$tmp/d.json"; exit 1; }
[ "$("$bin" tokenize --model "$tmp/mixtral" --decode "1 22557 1526")" = "<s> Hello world" ] || { echo "decode"; exit 1; }
[ "$("$bin" tokenize --model "$tmp/mixtral" --decode "1,22557,1526" --skip-special)" = "Hello world" ] || { echo "skip"; exit 1; }

# Synthetic tokenizer: the requested vocab size, usable at once.
"$bin" tokenize --synthetic-vocab 512 --out "$tmp/syn.json"
"$bin" tokenize --model "$tmp/syn.json" --text "The model" --json >"$tmp/s.json"
[ "$(jget "$tmp/s.json" "d['vocab_size']")" = 512 ] || { echo "synthetic vocab"; exit 1; }

# Errors: one line, non-zero exit.
expect_fail() {
  if "$bin" tokenize "$@" >"$tmp/out.txt" 2>"$tmp/err.txt"; then echo "no failure: $*"; exit 1; fi
  [ "$(wc -l <"$tmp/err.txt")" -le 1 ] || { echo "multi-line error: $*"; cat "$tmp/err.txt"; exit 1; }
}
expect_fail --model "$tmp/nowhere" --text x
grep -q "nowhere" "$tmp/err.txt" || { echo "error does not name the path"; exit 1; }
expect_fail --model "$tmp/mixtral" --decode "1 99999"
grep -q "out of range" "$tmp/err.txt" || { echo "id range"; exit 1; }
expect_fail --model "$tmp/mixtral" --decode "1 x2"
expect_fail --model "$tmp/mixtral"
expect_fail --synthetic-vocab 10
echo "tokenize: all checks passed"
