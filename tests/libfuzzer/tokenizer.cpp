// libFuzzer target: tokenizer.json parsing, encode and (streaming) decode (io/tokenizer.h).
// First byte odd: the rest is a tokenizer.json, loaded and used on a fixed text; even: the
// rest is text, encoded and decoded by a fixed synthetic tokenizer. Seeds: corpus/tokenizer/.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "common.h"
#include "deltamoe/io/tokenizer.h"

using deltamoe::io::Tokenizer;

namespace {
void exercise(const Tokenizer& t, const std::string& text) {
  const auto ids = t.encode(text, true);
  (void)t.decode(ids, false);
  (void)t.decode(ids, true);
  deltamoe::io::StreamDecoder stream(t);
  std::string streamed;
  for (int32_t id : ids) streamed += stream.next(id);
  streamed += stream.finish();
  for (int32_t id : ids) (void)t.piece(id);
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::unique_ptr<Tokenizer> fixed =
      Tokenizer::from_json(deltamoe::io::make_synthetic_tokenizer_json(400), "synthetic.json");
  if (size == 0) return 0;
  const std::string rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  try {
    if (data[0] & 1) {
      const auto t = Tokenizer::from_json(rest, "fuzz/tokenizer.json");
      exercise(*t, "Hello world, 12 caf\xc3\xa9 \xf0\x9f\x98\x80 <s> a  b\n");
    } else {
      exercise(*fixed, rest);
    }
  } catch (const deltamoe::Error& e) {
    deltamoe::fuzz::check_error(e, "tokenizer");
  }
  return 0;
}
