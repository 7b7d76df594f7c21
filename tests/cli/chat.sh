#!/usr/bin/env bash
# Chat templates end to end: every made model carries its family's chat template in
# tokenizer_config.json, and `tokenize --chat` prints the rendered prompt and its ids
# (the template's rendering itself is checked against transformers in test_chat_template).
set -euo pipefail
bin="$1"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
jget() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))" "$@"; }
fail() { echo "chat.sh: $*" >&2; exit 1; }

cat >"$tmp/msgs.json" <<'JSON'
[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
JSON
declare -A want=(
  [mixtral]='<s> [INST] Be brief.\n\nHi there [/INST]'
  [qwen2-moe]='<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n'
  [qwen3-moe]='<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n'
  [olmoe]='<s><|system|>\nBe brief.\n<|user|>\nHi there\n<|assistant|>\n'
)
for arch in mixtral qwen2-moe qwen3-moe olmoe; do
  m="$tmp/$arch"
  "$bin" make-model --arch "$arch" --preset tiny --out "$m" --quiet
  [ -f "$m/tokenizer_config.json" ] || fail "$arch: no tokenizer_config.json"
  [ "$(jget "$m/tokenizer_config.json" "'chat_template' in d")" = True ] || fail "$arch: no chat_template"
  "$bin" tokenize --model "$m" --chat "$tmp/msgs.json" --json >"$tmp/$arch.json"
  expected=$(printf '%b' "${want[$arch]}")
  got=$(jget "$tmp/$arch.json" "d['prompt']")
  [ "$got" = "${expected%$'\n'}" ] || fail "$arch: prompt $(jget "$tmp/$arch.json" "repr(d['prompt'])")"
  # The ids are those of the prompt, with no second <s> added.
  [ "$(jget "$tmp/$arch.json" "d['count'] == len(d['ids']) > 0")" = True ] || fail "$arch: ids"
  [ "$(jget "$tmp/$arch.json" "d['ids'].count(1)")" = "$([ "$arch" = mixtral ] || [ "$arch" = olmoe ] && echo 1 || echo 0)" ] ||
    fail "$arch: bos count $(jget "$tmp/$arch.json" "d['ids'][:4]")"
done
# Plain output: the prompt, then one "id -> 'piece'" line per token.
"$bin" tokenize --model "$tmp/mixtral" --chat "$tmp/msgs.json" --no-generation-prompt 2>/dev/null >"$tmp/plain.txt"
head -1 "$tmp/plain.txt" | grep -qF '<s> [INST] Be brief.' || fail "plain prompt"
grep -q "^ *1 -> '<s>'" "$tmp/plain.txt" || fail "plain ids"

# Errors: one line, non-zero exit.
echo '[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]' >"$tmp/bad.json"
if "$bin" tokenize --model "$tmp/mixtral" --chat "$tmp/bad.json" 2>"$tmp/err.txt"; then fail "alternation accepted"; fi
grep -q "^deltamoe: error: \[chat\] After the optional system message, conversation roles must alternate" "$tmp/err.txt" ||
  fail "alternation message: $(cat "$tmp/err.txt")"
[ "$(wc -l <"$tmp/err.txt")" -eq 1 ] || fail "error not one line"
rm "$tmp/mixtral/tokenizer_config.json"
if "$bin" tokenize --model "$tmp/mixtral" --chat "$tmp/msgs.json" 2>"$tmp/err.txt"; then fail "no template accepted"; fi
grep -q "\[chat\] .*no chat template" "$tmp/err.txt" || fail "missing template: $(cat "$tmp/err.txt")"
echo "chat.sh: ok"
