// libFuzzer target: the safetensors reader (io/safetensors.h) on whole files. The input is
// written to a per-process temporary file (the reader maps files), opened, and every tensor
// read. Seeds: corpus/safetensors/.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>

#include "common.h"
#include "deltamoe/io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path =
      "/tmp/deltamoe-fuzz-" + std::to_string(::getpid()) + ".safetensors";
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return 0;
  const bool ok = std::fwrite(data, 1, size, f) == size;
  std::fclose(f);
  if (!ok) return 0;
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
