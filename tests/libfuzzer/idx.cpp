// libFuzzer target: IDX files, plain and gzip (io/idx.h: read_idx, load_idx_split). The first
// byte picks the mode: bits 0-1 the expected dimension count (0 = any, 1, 3, 0), bit 2 whether
// the file is gzip-compressed here first (so mutations reach the IDX header behind valid gzip;
// raw input starting with the gzip magic exercises the inflater's checks), bit 3 an
// image/label pair: the next two bytes (big-endian) are the length of the images file, the
// rest is the labels file. Seeds: corpus/idx/.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>

#include "common.h"
#include "deltamoe/io/idx.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  static const std::string images = deltamoe::fuzz::temp_path("-images.idx");
  static const std::string labels = deltamoe::fuzz::temp_path("-labels.idx");
  const uint8_t mode = data[0];
  const bool gzip = mode & 4;
  ++data, --size;
  try {
    if (mode & 8) {
      if (size < 2) return 0;
      const size_t n = std::min<size_t>(size - 2, size_t{data[0]} << 8 | data[1]);
      if (!deltamoe::fuzz::write_file(images, data + 2, n, gzip) ||
          !deltamoe::fuzz::write_file(labels, data + 2 + n, size - 2 - n, gzip))
        return 0;
      const auto split = deltamoe::io::load_idx_split(images, labels, 10);
      if (split.images.numel() != split.labels.numel() * split.rows * split.cols) std::abort();
    } else {
      static const int kNdim[] = {0, 1, 3, 0};
      if (!deltamoe::fuzz::write_file(images, data, size, gzip)) return 0;
      const auto a = deltamoe::io::read_idx(images, kNdim[mode & 3]);
      uint64_t total = 1;
      for (const int64_t d : a.dims) total *= static_cast<uint64_t>(d);
      if (total != a.data.size()) std::abort();
    }
  } catch (const deltamoe::Error& e) {
    deltamoe::fuzz::check_error(e, {"idx", "data"});
  }
  return 0;
}
