// Random-mutation fuzzing of the safetensors reader (deterministic; runs as a GoogleTest).
//
// Valid files are mutated (bit flips, byte overwrites, truncation, extension, header-length
// edits, token-level JSON edits with the length fixed up so the parser sees them), written to
// a temp file and opened. The reader must either throw deltamoe::Error or return tensors that
// lie entirely inside the file (or are exact copies of in-file bytes). Run under the `debug`
// preset (ASan + UBSan) to catch out-of-bounds reads that do not crash.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "deltamoe/io/safetensors.h"

using namespace deltamoe;
using namespace deltamoe::io;
namespace fs = std::filesystem;

namespace {

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// Unlinks first: rewriting a file through O_TRUNC makes ext4 flush it on close
// (auto_da_alloc), which turns thousands of tiny writes into seconds of waiting.
void write_bytes(const std::string& path, const std::string& bytes) {
  fs::remove(path);
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

uint64_t header_len(const std::string& f) {
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(f[static_cast<size_t>(i)]);
  return n;
}

void set_header_len(std::string& f, uint64_t n) {
  for (int i = 0; i < 8; ++i) f[static_cast<size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xff);
}

Tensor filled(Shape shape, DType dtype, float start) {
  Tensor t(std::move(shape));
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = start + static_cast<float>(i);
  return t.to(dtype);
}

// Tokens that steer JSON edits toward interesting parser and validator states.
const char* const kTokens[] = {
    "{", "}", "[", "]", ",", ":", "\"", "\\", "\\u0000", "\\ud800", "null", "true", "-1", "0",
    "1", "4", "16", "1e3", "2.5", "-0", "1e400", "18446744073709551615", "18446744073709551616",
    "9223372036854775807", "4294967296", "\"F32\"", "\"BF16\"", "\"F16\"", "\"I32\"",
    "\"F64\"", "\"U8\"", "\"dtype\"", "\"shape\"", "\"data_offsets\"", "\"__metadata__\"",
    "[0,0]", "[0]", "[]", "{}", "\"x\"", " ", "\n", "\xff", "\xc3\xa9"};

class Mutator {
 public:
  explicit Mutator(uint64_t seed) : rng_(seed) {}

  size_t below(size_t n) { return n == 0 ? 0 : static_cast<size_t>(rng_() % n); }

  std::string mutate(std::string f) {
    const int edits = 1 + static_cast<int>(below(3));
    for (int e = 0; e < edits; ++e) {
      const size_t hlen = std::min<uint64_t>(header_len(f), f.size() - 8);
      switch (below(10)) {
        case 0:  // bit flips anywhere
          for (size_t k = 0, n = 1 + below(8); k < n; ++k)
            f[below(f.size())] ^= static_cast<char>(1u << below(8));
          break;
        case 1:  // random bytes anywhere
          for (size_t k = 0, n = 1 + below(4); k < n; ++k)
            f[below(f.size())] = static_cast<char>(rng_());
          break;
        case 2:  // truncation (sometimes below the 8-byte length)
          f.resize(below(f.size() + 1));
          if (f.size() < 8) return f;
          break;
        case 3:  // extension with random bytes
          for (size_t k = 0, n = 1 + below(64); k < n; ++k) f.push_back(static_cast<char>(rng_()));
          break;
        case 4: {  // header length edits: small deltas, random, extremes
          const uint64_t choices[] = {header_len(f) + 1, header_len(f) - 1, header_len(f) + 8,
                                      rng_(), rng_() % (f.size() + 16), 0, 1,
                                      ~uint64_t{0}, uint64_t{1} << 63, 100'000'001};
          set_header_len(f, choices[below(std::size(choices))]);
          break;
        }
        case 5:
        case 6:
        case 7:  // token edit inside the header, keeping the length field consistent
          if (f.size() >= 8) f = token_edit(std::move(f));
          break;
        case 8: {  // move one tensor's data window, keeping its length (→ overlaps, holes)
          std::vector<size_t> at;
          const std::string key = "\"data_offsets\":[";
          for (size_t i = f.find(key); i != std::string::npos && i < 8 + hlen; i = f.find(key, i + 1))
            at.push_back(i + key.size());
          if (at.empty()) break;
          const size_t p = at[below(at.size())];
          const size_t close = f.find(']', p), comma = f.find(',', p);
          if (close == std::string::npos || comma == std::string::npos || comma > close) break;
          try {
            const int64_t b0 = std::stoll(f.substr(p, comma - p));
            const int64_t e0 = std::stoll(f.substr(comma + 1, close - comma - 1));
            const int64_t d = static_cast<int64_t>(below(33)) - 16;
            const std::string rep = std::to_string(b0 + d) + "," + std::to_string(e0 + d);
            f.replace(p, close - p, rep);
            set_header_len(f, hlen + rep.size() - (close - p));
          } catch (const std::exception&) {  // not numbers after earlier edits: skip
          }
          break;
        }
        default: {  // rewrite one number in the header (offsets, extents)
          std::vector<size_t> digits;
          for (size_t i = 8; i < 8 + hlen && i < f.size(); ++i)
            if (f[i] >= '0' && f[i] <= '9' && (f[i - 1] < '0' || f[i - 1] > '9')) digits.push_back(i);
          if (digits.empty()) break;
          const size_t start = digits[below(digits.size())];
          size_t end = start;
          while (end < f.size() && f[end] >= '0' && f[end] <= '9') ++end;
          const uint64_t old = std::stoull(f.substr(start, std::min<size_t>(end - start, 19)));
          const uint64_t vals[] = {old + 1, old - 1, old + 4, old * 2, 0, rng_(), rng_() % 64,
                                   uint64_t{1} << 62, uint64_t{1} << 32};
          const std::string rep = std::to_string(vals[below(std::size(vals))]);
          f.replace(start, end - start, rep);
          set_header_len(f, hlen + rep.size() - (end - start));
          break;
        }
      }
    }
    return f;
  }

  // Inserts and/or deletes a JSON-ish token inside the header and fixes the length field.
  std::string token_edit(std::string f) {
    const size_t hlen = std::min<uint64_t>(header_len(f), f.size() - 8);
    const size_t pos = 8 + below(hlen + 1);
    const std::string tok = below(4) == 0 ? "" : kTokens[below(std::size(kTokens))];
    const size_t del = std::min(below(4) == 0 ? below(8) : size_t{0}, 8 + hlen - pos);
    f.replace(pos, del, tok);
    set_header_len(f, hlen - del + tok.size());
    return f;
  }

 private:
  std::mt19937_64 rng_;
};

struct Counts {
  int opened = 0, rejected = 0, tensors = 0;
};

// Opens `path`; on success checks that every tensor lies inside the file.
void open_and_check(const std::string& path, Counts& counts) {
  try {
    const auto file = SafetensorsFile::open(path);
    ++counts.opened;
    const uint8_t* lo = file.file_data();
    const uint8_t* hi = lo + file.file_size();
    const size_t data_size = file.file_size() - file.data_offset();
    for (const auto& name : file.names()) {
      const SafetensorsEntry& e = file.entry(name);
      ASSERT_LE(e.begin, e.end);
      ASSERT_LE(e.end, data_size) << name;
      const Tensor t = file.get(name);
      ASSERT_EQ(t.nbytes(), e.end - e.begin) << name;
      ASSERT_EQ(t.shape(), e.shape);
      const auto* p = static_cast<const uint8_t*>(t.raw());
      const uint8_t* src = lo + file.data_offset() + e.begin;
      if (p >= lo && p <= hi) {
        ASSERT_EQ(p, src) << name;
        ASSERT_LE(p + t.nbytes(), hi) << name;
      } else if (t.nbytes() > 0) {
        ASSERT_EQ(std::memcmp(p, src, t.nbytes()), 0) << "copy differs from file: " << name;
      }
      // Touch every element (ASan would flag reads outside the mapping).
      volatile float sink = 0;
      for (float v : t.to_vector()) sink = sink + v;
      ++counts.tensors;
    }
  } catch (const Error& e) {
    ++counts.rejected;
    const std::string msg = e.what();
    if (std::getenv("DELTAMOE_FUZZ_VERBOSE") != nullptr) std::printf("%s\n", msg.c_str());
    ASSERT_EQ(msg.rfind("[safetensors] ", 0), 0u) << msg;
    ASSERT_EQ(msg.find('\n'), std::string::npos) << msg;
  }
  // Anything else (std::bad_alloc, nlohmann exceptions, InternalError) escapes and fails.
}

}  // namespace

TEST(FuzzSafetensors, RandomMutationsNeverCrash) {
  const fs::path dir = fs::temp_directory_path() / ("deltamoe_fuzz_st_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const std::string seed_path = (dir / "seed.safetensors").string();
  const std::string path = (dir / "mutant.safetensors").string();

  std::vector<std::string> seeds;
  write_safetensors(seed_path,
                    {{"w", filled({3, 4}, DType::f32, 1)}, {"b", filled({5}, DType::bf16, -2)},
                     {"h", filled({2, 3}, DType::f16, 0.5f)}, {"i", filled({2}, DType::f32, 7)},
                     {"e", filled({0, 4}, DType::f32, 0)}},
                    {{"format", "pt"}, {"k", "2"}});
  seeds.push_back(read_bytes(seed_path));
  write_safetensors(seed_path, {{"router", filled({8, 16}, DType::f32, 0)}});
  seeds.push_back(read_bytes(seed_path));
  {
    // Hand-made: odd header length (unaligned data), metadata only, and an I32 tensor.
    std::string h = R"({"a":{"dtype":"I32","shape":[2],"data_offsets":[0,8]},)"
                    R"("__metadata__":{"x":"y"}} )";
    std::string f(8, '\0');
    set_header_len(f, h.size());
    seeds.push_back(f + h + std::string("\x01\x00\x00\x00\xff\xff\xff\xff", 8));
  }
  for (const auto& s : seeds) {  // the seeds themselves are valid
    write_bytes(path, s);
    ASSERT_NO_THROW(SafetensorsFile::open(path));
  }

  Mutator m(20261124);
  Counts counts;
  constexpr int kIterations = 6000;
  for (int it = 0; it < kIterations; ++it) {
    const std::string& seed = seeds[m.below(seeds.size())];
    // Half the runs are pure token edits (which keep the length field right), so most of the
    // effort reaches the JSON validator rather than dying on the length check.
    std::string f = m.below(2) == 0 ? m.token_edit(seed) : m.mutate(seed);
    if (m.below(4) == 0 && f.size() >= 8) f = m.token_edit(f);
    write_bytes(path, f);
    open_and_check(path, counts);
    if (HasFatalFailure()) {
      write_bytes((dir / "crash.safetensors").string(), f);
      FAIL() << "iteration " << it << "; input saved to " << (dir / "crash.safetensors");
    }
  }
  fs::remove_all(dir);
  std::printf("safetensors fuzz: %d mutants, %d opened (%d tensors read), %d rejected\n",
              kIterations, counts.opened, counts.tensors, counts.rejected);
  EXPECT_EQ(counts.opened + counts.rejected, kIterations);
  // The mutator must explore both outcomes, or the test proves little.
  EXPECT_GT(counts.opened, kIterations / 20);
  EXPECT_GT(counts.rejected, kIterations / 4);
}
