// Random-mutation fuzzing of the IDX reader, plain and gzip (deterministic GoogleTest).
//
// Three kinds of mutant: the raw IDX bytes mutated and written plain; the raw bytes mutated
// and then gzipped (exercises the parser behind zlib); and valid gzip files with the
// compressed bytes mutated (exercises zlib error reporting). read_idx must throw
// deltamoe::Error or return data whose size matches its dimensions (and, for plain files,
// equals the file's bytes after the header).
#include <gtest/gtest.h>
#include <unistd.h>
#include <zlib.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "deltamoe/io/idx.h"

using namespace deltamoe;
using namespace deltamoe::io;
namespace fs = std::filesystem;

namespace {

// Unlinks first: rewriting a file through O_TRUNC makes ext4 flush it on close
// (auto_da_alloc), which turns thousands of tiny writes into seconds of waiting.
void write_bytes(const std::string& path, const std::string& bytes) {
  fs::remove(path);
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string gzip_bytes(const std::string& raw) {
  std::string out(compressBound(raw.size()) + 64, '\0');
  z_stream zs{};
  deflateInit2(&zs, 6, Z_DEFLATED, 31, 8, Z_DEFAULT_STRATEGY);
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(raw.data()));
  zs.avail_in = static_cast<uInt>(raw.size());
  zs.next_out = reinterpret_cast<Bytef*>(out.data());
  zs.avail_out = static_cast<uInt>(out.size());
  deflate(&zs, Z_FINISH);
  out.resize(zs.total_out);
  deflateEnd(&zs);
  return out;
}

class Mutator {
 public:
  explicit Mutator(uint64_t seed) : rng_(seed) {}
  size_t below(size_t n) { return n == 0 ? 0 : static_cast<size_t>(rng_() % n); }

  std::string mutate(std::string f, bool header_bias) {
    const int edits = 1 + static_cast<int>(below(3));
    for (int e = 0; e < edits && !f.empty(); ++e) {
      // Most interesting bytes are in the first 4 + 4·ndim; aim there half the time.
      const size_t span = header_bias && below(2) == 0 ? std::min<size_t>(f.size(), 20) : f.size();
      switch (below(6)) {
        case 0:
          f[below(span)] ^= static_cast<char>(1u << below(8));
          break;
        case 1:
          f[below(span)] = static_cast<char>(rng_());
          break;
        case 2:
          f.resize(below(f.size() + 1));
          break;
        case 3:
          for (size_t k = 0, n = 1 + below(16); k < n; ++k) f.push_back(static_cast<char>(rng_()));
          break;
        case 4: {  // set one big-endian dimension word to an interesting value
          const size_t word = 4 * (1 + below(3));
          if (word + 4 > f.size()) break;
          const uint32_t vals[] = {0, 1, 2, 3, 27, 28, 29, 0xffffffffu, 0x80000000u,
                                   static_cast<uint32_t>(rng_())};
          const uint32_t v = vals[below(std::size(vals))];
          for (int b = 0; b < 4; ++b) f[word + b] = static_cast<char>(v >> (24 - 8 * b));
          break;
        }
        default:  // magic's type code / ndim byte
          if (f.size() >= 4) f[2 + below(2)] = static_cast<char>(below(2) ? rng_() : below(10));
          break;
      }
    }
    return f;
  }

 private:
  std::mt19937_64 rng_;
};

std::string idx_bytes(const std::vector<uint32_t>& dims, uint32_t seed) {
  std::string f = {0, 0, 0x08, static_cast<char>(dims.size())};
  size_t n = 1;
  for (uint32_t d : dims) {
    n *= d;
    for (int b = 0; b < 4; ++b) f.push_back(static_cast<char>(d >> (24 - 8 * b)));
  }
  std::mt19937 rng(seed);
  for (size_t i = 0; i < n; ++i) f.push_back(static_cast<char>(rng()));
  return f;
}

}  // namespace

TEST(FuzzIdx, RandomMutationsNeverCrash) {
  const fs::path dir = fs::temp_directory_path() / ("deltamoe_fuzz_idx_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const std::string path = (dir / "mutant").string();
  const std::vector<std::string> seeds = {idx_bytes({6, 28, 28}, 1), idx_bytes({40}, 2),
                                          idx_bytes({3, 5, 7}, 3), idx_bytes({0, 28, 28}, 4)};
  for (const auto& s : seeds) {
    write_bytes(path, s);
    ASSERT_NO_THROW(read_idx(path));
    write_bytes(path, gzip_bytes(s));
    ASSERT_NO_THROW(read_idx(path));
  }

  Mutator m(424242);
  int opened = 0, rejected = 0;
  constexpr int kIterations = 4000;
  for (int it = 0; it < kIterations; ++it) {
    const std::string& seed = seeds[m.below(seeds.size())];
    const int kind = static_cast<int>(m.below(3));
    std::string raw = kind == 2 ? seed : m.mutate(seed, true);
    std::string file = kind == 0 ? raw : gzip_bytes(raw);
    if (kind == 2) file = m.mutate(file, false);
    write_bytes(path, file);
    try {
      const IdxArray a = read_idx(path, m.below(3) == 0 ? 3 : 0);
      ++opened;
      size_t n = 1;
      for (int64_t d : a.dims) {
        ASSERT_GE(d, 0);
        n *= static_cast<size_t>(d);
      }
      ASSERT_EQ(a.data.size(), n) << "iteration " << it;
      const bool plain = file.size() < 2 || static_cast<uint8_t>(file[0]) != 0x1f ||
                         static_cast<uint8_t>(file[1]) != 0x8b;
      if (plain) {
        ASSERT_EQ(file.size(), 4 + 4 * a.dims.size() + n) << "iteration " << it;
        if (n > 0) {
          ASSERT_EQ(std::memcmp(a.data.data(), file.data() + (file.size() - n), n), 0);
        }
      }
    } catch (const Error& e) {
      ++rejected;
      const std::string msg = e.what();
      if (std::getenv("DELTAMOE_FUZZ_VERBOSE") != nullptr) std::printf("%s\n", msg.c_str());
      ASSERT_EQ(msg.rfind("[idx] " + path + ": ", 0), 0u) << msg;
      ASSERT_EQ(msg.find('\n'), std::string::npos) << msg;
    }
    if (HasFatalFailure()) {
      write_bytes((dir / "crash").string(), file);
      FAIL() << "iteration " << it << "; input saved to " << (dir / "crash");
    }
  }
  fs::remove_all(dir);
  std::printf("idx fuzz: %d mutants, %d opened, %d rejected\n", kIterations, opened, rejected);
  EXPECT_EQ(opened + rejected, kIterations);
  EXPECT_GT(opened, kIterations / 50);
  EXPECT_GT(rejected, kIterations / 4);
}
