// libFuzzer target: the classifier server's POST /v1/classify body parser (serve/http_api.h:
// parse_classify_body, base64_decode). The first byte picks the image size: odd, 784 pixels
// (Fashion-MNIST); even, 1 + (byte >> 1) % 16 pixels, so that mutated JSON arrays of numbers
// can still be accepted. At most 8 images per body. A rejected body's message must be one
// "[request] ..." line, sent back as one line of JSON. Seeds: corpus/classify_request/.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "common.h"
#include "deltamoe/serve/http_api.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const int64_t dim = (data[0] & 1) ? 784 : 1 + (data[0] >> 1) % 16;
  const std::string_view body(reinterpret_cast<const char*>(data) + 1, size - 1);
  try {
    const auto images = deltamoe::serve::parse_classify_body(body, dim, 8);
    if (images.count < 1 || images.count > 8 ||
        images.pixels.size() != static_cast<size_t>(images.count * dim))
      std::abort();
    for (const float p : images.pixels)
      if (!(p >= 0.0f && p <= 255.0f)) std::abort();
  } catch (const deltamoe::Error& e) {
    deltamoe::fuzz::check_error(e, "request");
    if (deltamoe::serve::error_json(e.what()).find('\n') != std::string::npos) std::abort();
  }
  // The base64 decoder on its own: whatever it decodes encodes and decodes back the same.
  try {
    const std::string raw = deltamoe::serve::base64_decode(body);
    if (deltamoe::serve::base64_decode(deltamoe::serve::base64_encode(raw)) != raw) std::abort();
  } catch (const deltamoe::Error& e) {
    deltamoe::fuzz::check_error(e, "request");
  }
  return 0;
}
