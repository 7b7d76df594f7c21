// libFuzzer target: the safetensors reader (io/safetensors.h) on whole files. The input is
// written to a per-process temporary file (the reader maps files), opened, and every tensor
// read. Seeds: corpus/safetensors/.
#include <cstddef>
#include <cstdint>
#include <string>

#include "common.h"
#include "deltamoe/io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = deltamoe::fuzz::temp_path(".safetensors");
  if (!deltamoe::fuzz::write_file(path, data, size, /*gzip=*/false)) return 0;
  try {
    const auto st = deltamoe::io::SafetensorsFile::open(path);
    for (const auto& e : st.entries()) {
      const auto t = st.get(e.name);
      volatile float sink = t.numel() > 0 ? t.to(deltamoe::DType::f32).to_vector().back() : 0.0f;
      (void)sink;
    }
  } catch (const deltamoe::Error& e) {
    deltamoe::fuzz::check_error(e, "safetensors");
  }
  return 0;
}
