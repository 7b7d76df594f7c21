// libFuzzer target: config.json and model.safetensors.index.json parsing (io/hf_model.h).
// The first byte picks the parser; the rest is the file. Seeds: corpus/hf_config/.
#include <cstddef>
#include <cstdint>
#include <string>

#include "common.h"
#include "deltamoe/io/hf_model.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string text(reinterpret_cast<const char*>(data) + 1, size - 1);
  try {
    if (data[0] & 1) {
      const auto map = deltamoe::io::parse_hf_index(text, "fuzz/model.safetensors.index.json");
      (void)map;
    } else {
      const auto cfg = deltamoe::io::HfConfig::parse(text, "fuzz/config.json");
      for (int64_t l = 0; l < cfg.num_hidden_layers && l < 4096; ++l) (void)cfg.is_moe_layer(l);
      (void)deltamoe::io::hf_config_to_json(cfg);
    }
  } catch (const deltamoe::Error& e) {
    deltamoe::fuzz::check_error(e, "hf");
  }
  return 0;
}
