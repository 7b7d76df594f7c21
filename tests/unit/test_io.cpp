// io/: safetensors reader/writer, IDX reader/writer, Fashion-MNIST loader, golden file.
#include <gtest/gtest.h>
#include <unistd.h>
#include <zlib.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <string>

#include "deltamoe/io/idx.h"
#include "deltamoe/io/output.h"
#include "deltamoe/io/safetensors.h"

using namespace deltamoe;
using namespace deltamoe::io;
namespace fs = std::filesystem;

namespace {

// A fresh directory per test, removed afterwards.
class TempDir {
 public:
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ = fs::temp_directory_path() /
            ("deltamoe_io_" + std::string(info->name()) + "_" + std::to_string(::getpid()));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  fs::path path_;
};

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// A safetensors file from a header string and a data buffer (no validation: for bad files).
std::string st_bytes(const std::string& header, const std::string& data, int64_t len_delta = 0) {
  const uint64_t n = header.size() + static_cast<uint64_t>(len_delta);
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header + data;
}

Tensor ramp(Shape shape, float start = 0.5f) {
  Tensor t(std::move(shape));
  for (int64_t i = 0; i < t.numel(); ++i)
    t.data<float>()[i] = start + 0.25f * static_cast<float>(i);
  return t;
}

// Expects `fn` to throw deltamoe::Error whose one-line message contains `needle`.
template <typename Fn>
void expect_error(Fn&& fn, const std::string& needle) {
  try {
    fn();
    ADD_FAILURE() << "no error; expected one containing: " << needle;
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(needle), std::string::npos) << "message: " << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "message is not one line: " << msg;
  }
}

}  // namespace

// ---------------------------------------------------------------- safetensors

// check_writable: creates the missing directories, leaves no file behind, and refuses a
// directory, an unwritable location and an empty path with Error(component) naming the path.
TEST(Output, CheckWritable) {
  namespace fs = std::filesystem;
  const fs::path root = fs::temp_directory_path() / ("deltamoe_out_" + std::to_string(::getpid()));
  fs::remove_all(root);
  const std::string file = (root / "a" / "b" / "m.safetensors").string();
  io::check_writable(file, "test");
  EXPECT_TRUE(fs::is_directory(root / "a" / "b"));
  EXPECT_TRUE(fs::is_empty(root / "a" / "b"));
  EXPECT_FALSE(fs::exists(file));
  io::check_writable_dir((root / "d").string(), "test");
  EXPECT_TRUE(fs::is_empty(root / "d"));
  try {
    io::check_writable(root.string(), "test");
    FAIL() << "a directory was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("[test]"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("is a directory"), std::string::npos) << e.what();
  }
  EXPECT_THROW(io::check_writable("/sys/deltamoe_check.safetensors", "test"), Error);
  EXPECT_THROW(io::check_writable("", "test"), Error);
  EXPECT_THROW(io::check_writable_dir("/sys/deltamoe_check", "test"), Error);
  fs::remove_all(root);
}

TEST(Safetensors, RoundTripAllDtypes) {
  TempDir dir;
  const std::string path = dir.file("a.safetensors");
  Tensor f = ramp({2, 3});
  Tensor h = ramp({5}, -1.0f).to(DType::f16);
  Tensor b = ramp({3, 1, 2}, 2.0f).to(DType::bf16);
  Tensor i({4}, DType::i32);
  for (int k = 0; k < 4; ++k) i.data<int32_t>()[k] = -7 + 1000 * k;
  Tensor empty({0, 3});
  Tensor scalar = Tensor::from({42.0f}, {});
  // bf16 first so that the writer's size-ordered layout is exercised.
  write_safetensors(path, {{"b", b}, {"f", f}, {"h", h}, {"i", i}, {"empty", empty}, {"s", scalar}},
                    {{"format", "pt"}, {"note", "x"}});

  const auto file = SafetensorsFile::open(path);
  EXPECT_EQ(file.names().size(), 6u);
  EXPECT_TRUE(file.has("f"));
  EXPECT_FALSE(file.has("g"));
  EXPECT_EQ(file.metadata().at("format"), "pt");
  EXPECT_EQ(file.metadata().at("note"), "x");
  EXPECT_EQ(file.data_offset() % 8, 0u) << "header not padded to 8 bytes";
  const std::pair<std::string, Tensor> expect[] = {{"b", b}, {"f", f},         {"h", h},
                                                   {"i", i}, {"empty", empty}, {"s", scalar}};
  for (const auto& [name, t] : expect) {
    const Tensor got = file.get(name);
    EXPECT_EQ(got.dtype(), t.dtype()) << name;
    EXPECT_EQ(got.shape(), t.shape()) << name;
    EXPECT_EQ(got.to_vector(), t.to_vector()) << name;
  }
  EXPECT_EQ(file.get("i").data<int32_t>()[3], 2993);
  // Every tensor is aligned in the file, so every get() is a zero-copy view of the mapping.
  for (const auto& name : file.names()) {
    const auto* p = static_cast<const uint8_t*>(file.get(name).raw());
    EXPECT_GE(p, file.file_data()) << name;
    EXPECT_LE(p, file.file_data() + file.file_size()) << name;
  }
}

TEST(Safetensors, TensorsOutliveTheReader) {
  TempDir dir;
  const std::string path = dir.file("a.safetensors");
  write_safetensors(path, {{"w", ramp({64, 16})}});
  Tensor w;
  {
    const auto file = SafetensorsFile::open(path);
    w = file.get("w");
  }
  fs::remove(path);  // the mapping keeps the bytes after unlink, too
  EXPECT_EQ(w.to_vector(), ramp({64, 16}).to_vector());
}

TEST(Safetensors, UnalignedDataIsCopied) {
  // A one-byte-longer header ("{...} " not padded) puts the f32 data at an odd address.
  TempDir dir;
  const std::string path = dir.file("odd.safetensors");
  std::string header = R"({"x":{"dtype":"F32","shape":[3],"data_offsets":[0,12]}})";
  if ((8 + header.size()) % 4 == 0) header += " ";
  const float vals[3] = {1.5f, -2.0f, 3.25f};
  write_bytes(path, st_bytes(header, std::string(reinterpret_cast<const char*>(vals), 12)));
  const auto file = SafetensorsFile::open(path);
  const Tensor x = file.get("x");
  EXPECT_EQ(reinterpret_cast<uintptr_t>(x.raw()) % 4, 0u);
  EXPECT_EQ(x.to_vector(), std::vector<float>({1.5f, -2.0f, 3.25f}));
  const auto* p = static_cast<const uint8_t*>(x.raw());
  EXPECT_TRUE(p < file.file_data() || p >= file.file_data() + file.file_size()) << "not a copy";
}

TEST(Safetensors, HandWrittenReferenceBytes) {
  // Bytes as the Python package writes them (safetensors.torch.save_file({"a": tensor([[1.,
  // 2.]]), "b": tensor([7], dtype=int32)})): header sorted by key, padded with spaces.
  const std::string header = R"({"a":{"dtype":"F32","shape":[1,2],"data_offsets":[0,8]},)"
                             R"("b":{"dtype":"I32","shape":[1],"data_offsets":[8,12]}})";
  std::string padded = header + std::string((8 - header.size() % 8) % 8, ' ');
  const float a[2] = {1.0f, 2.0f};
  const int32_t b = 7;
  std::string data(reinterpret_cast<const char*>(a), 8);
  data += std::string(reinterpret_cast<const char*>(&b), 4);
  TempDir dir;
  write_bytes(dir.file("ref.safetensors"), st_bytes(padded, data));
  const auto file = SafetensorsFile::open(dir.file("ref.safetensors"));
  EXPECT_EQ(file.names(), std::vector<std::string>({"a", "b"}));
  EXPECT_EQ(file.get("a").to_vector(), std::vector<float>({1.0f, 2.0f}));
  EXPECT_EQ(file.get("b").data<int32_t>()[0], 7);
  EXPECT_TRUE(file.metadata().empty());
}

TEST(Safetensors, ReadsFileWrittenByPythonPackage) {
  // Cross-check with the reference implementation when python3 + safetensors are present.
  if (std::system("python3 -c 'import safetensors, numpy' >/dev/null 2>&1") != 0)
    GTEST_SKIP() << "python3 with safetensors and numpy not available";
  TempDir dir;
  const std::string py = dir.file("py.safetensors");
  const std::string ours = dir.file("ours.safetensors");
  const std::string script =
      "import numpy as np, sys\n"
      "from safetensors.numpy import save_file, load_file\n"
      "save_file({'w': np.arange(6, dtype=np.float32).reshape(2, 3) * 0.5,\n"
      "           'h': np.array([1.5, -2], dtype=np.float16),\n"
      "           'n': np.array([[3], [4]], dtype=np.int32)}, sys.argv[1], metadata={'k': 'v'})\n"
      "d = load_file(sys.argv[2])\n"
      "assert d['x'].dtype == np.float32 and d['x'].shape == (2, 2), d\n"
      "assert (d['x'].ravel() == [0.5, 0.75, 1.0, 1.25]).all(), d\n"
      "assert d['j'].dtype == np.int32 and list(d['j']) == [-7, 993, 1993, 2993], d\n";
  write_bytes(dir.file("check.py"), script);
  Tensor j({4}, DType::i32);
  for (int k = 0; k < 4; ++k) j.data<int32_t>()[k] = -7 + 1000 * k;
  write_safetensors(ours, {{"j", j}, {"x", ramp({2, 2})}}, {{"format", "np"}});
  ASSERT_EQ(std::system(("python3 " + dir.file("check.py") + " " + py + " " + ours).c_str()), 0)
      << "python could not write its file or read ours";
  const auto file = SafetensorsFile::open(py);
  EXPECT_EQ(file.get("w").to_vector(), std::vector<float>({0, 0.5f, 1, 1.5f, 2, 2.5f}));
  EXPECT_EQ(file.get("h").dtype(), DType::f16);
  EXPECT_EQ(file.get("h").to_vector(), std::vector<float>({1.5f, -2.0f}));
  EXPECT_EQ(file.get("n").shape(), Shape({2, 1}));
  EXPECT_EQ(file.get("n").data<int32_t>()[1], 4);
  EXPECT_EQ(file.metadata().at("k"), "v");
}

TEST(Safetensors, EveryHeaderError) {
  TempDir dir;
  const std::string path = dir.file("bad.safetensors");
  const std::string data64(64, '\0');
  auto check = [&](const std::string& bytes, const std::string& needle) {
    write_bytes(path, bytes);
    expect_error([&] { SafetensorsFile::open(path); }, needle);
  };
  auto entry = [](const std::string& body) { return "{\"x\":" + body + "}"; };
  const std::string ok = R"({"dtype":"F32","shape":[4],"data_offsets":[0,16]})";
  // Sanity: the base case opens.
  write_bytes(path, st_bytes(entry(ok), data64));
  EXPECT_NO_THROW(SafetensorsFile::open(path));

  expect_error([&] { SafetensorsFile::open(dir.file("missing")); }, "cannot open");
  expect_error([&] { SafetensorsFile::open(dir.file("")); }, "not a regular file");
  check("", "shorter than the 8-byte header length");
  check("\x05\0\0", "shorter than the 8-byte header length");
  check(st_bytes(entry(ok), data64, 1000), "exceeds file size");
  check(st_bytes(entry(ok), data64, -(int64_t{1} << 62)), "exceeds file size");
  {
    // A header length over 100 MB in a file that is long enough (sparse, so this is cheap).
    const std::string big = dir.file("big.safetensors");
    write_bytes(big, st_bytes("{}", "", 100'000'001 - 2));
    fs::resize_file(big, 8 + 100'000'001);
    expect_error([&] { SafetensorsFile::open(big); }, "exceeds the limit");
  }
  check(st_bytes("{", ""), "header length 1 is too short");
  check(st_bytes("{ ", ""), "not valid JSON");
  check(st_bytes("{\"x\":\n", ""), "not valid JSON");
  check(st_bytes("[1,2]", ""), "header is a JSON array, not an object");
  check(st_bytes("\"ab\"", ""), "not an object");
  check(st_bytes(R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},"a":{}})", ""),
        "duplicate key 'a'");
  check(st_bytes(R"({"x":[[[[[[1]]]]]]})", ""), "nests deeper");
  check(st_bytes(entry("5"), data64), "tensor 'x': entry is a JSON number");
  check(st_bytes(entry(R"({"shape":[4],"data_offsets":[0,16]})"), data64),
        "tensor 'x': missing dtype");
  check(st_bytes(entry(R"({"dtype":"F32","data_offsets":[0,16]})"), data64), "missing shape");
  check(st_bytes(entry(R"({"dtype":"F32","shape":[4]})"), data64), "missing data_offsets");
  check(st_bytes(entry(R"({"dtype":"F32","shape":[4],"data_offsets":[0,16],"z":1})"), data64),
        "unexpected field 'z'");
  check(st_bytes(entry(R"({"dtype":"F64","shape":[2],"data_offsets":[0,16]})"), data64),
        "tensor 'x': dtype F64 is not supported");
  check(st_bytes(entry(R"({"dtype":"Q7","shape":[2],"data_offsets":[0,16]})"), data64),
        "unknown dtype 'Q7'");
  check(st_bytes(entry(R"({"dtype":3,"shape":[2],"data_offsets":[0,16]})"), data64),
        "dtype is a JSON number");
  check(st_bytes(entry(R"({"dtype":"F32","shape":4,"data_offsets":[0,16]})"), data64),
        "shape is a JSON number");
  check(st_bytes(entry(R"({"dtype":"F32","shape":[-4],"data_offsets":[0,16]})"), data64),
        "must hold non-negative integers");
  check(st_bytes(entry(R"({"dtype":"F32","shape":[4.0],"data_offsets":[0,16]})"), data64),
        "must hold non-negative integers");
  check(st_bytes(entry(R"({"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,16]})"),
                 data64),
        "overflows 64 bits");
  check(st_bytes(entry(R"({"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,16]})"),
                 data64),
        "overflows 64 bits in bytes");
  check(st_bytes(entry(R"({"dtype":"F32","shape":[4],"data_offsets":[0]})"), data64),
        "must be [begin, end]");
  check(st_bytes(entry(R"({"dtype":"F32","shape":[4],"data_offsets":[0,-16]})"), data64),
        "must be [begin, end]");
  check(st_bytes(entry(R"({"dtype":"F32","shape":[4],"data_offsets":[16,0]})"), data64),
        "begin > end");
  check(st_bytes(entry(R"({"dtype":"F32","shape":[4],"data_offsets":[0,99]})"), data64),
        "[safetensors] " + path + ": tensor 'x': data_offsets [0, 99] exceed data size 64");
  check(st_bytes(entry(R"({"dtype":"F32","shape":[4],"data_offsets":[0,12]})"), data64),
        "hold 12 bytes but F32 [4] needs 16");
  check(st_bytes(R"({"x":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                 R"("y":{"dtype":"I32","shape":[2],"data_offsets":[12,20]}})",
                 data64),
        "tensor 'y': data_offsets [12, 20] overlap tensor 'x' [0, 16]");
  check(st_bytes(R"({"__metadata__":[1]})", ""), "__metadata__ is a JSON array");
  check(st_bytes(R"({"__metadata__":{"a":1}})", ""), "__metadata__ 'a' is a JSON number");
  // Names are quoted with control characters escaped, keeping the message on one line.
  check(st_bytes(R"({"a\nb":7})", ""), "tensor 'a\\x0ab'");
  // Not UTF-8.
  check(st_bytes("{\"\xff\":1}", ""), "not valid JSON");
}

TEST(Safetensors, AcceptedEdgeCases) {
  TempDir dir;
  const std::string path = dir.file("edge.safetensors");
  // Empty header object; empty tensors at any offset (even inside another one); holes.
  write_bytes(path, st_bytes("{}", ""));
  EXPECT_TRUE(SafetensorsFile::open(path).names().empty());
  write_bytes(path, st_bytes(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[8,16]},)"
                             R"("e":{"dtype":"BF16","shape":[3,0],"data_offsets":[12,12]},)"
                             R"("__metadata__":{}})",
                             std::string(24, '\0')));
  const auto f = SafetensorsFile::open(path);
  EXPECT_EQ(f.names(), std::vector<std::string>({"x", "e"}));  // data-buffer order
  EXPECT_EQ(f.get("e").numel(), 0);
  EXPECT_EQ(f.entry("x").begin, 8u);
  expect_error([&] { f.get("nope"); }, "no tensor 'nope' (the file has 2 tensors)");
}

TEST(Safetensors, WriterErrorsAndAtomicity) {
  TempDir dir;
  const std::string path = dir.file("w.safetensors");
  expect_error(
      [&] {
        write_safetensors(path, {{"a", ramp({2})}, {"a", ramp({2})}});
      },
      "duplicate tensor name 'a'");
  expect_error([&] { write_safetensors(path, {{"", ramp({2})}}); }, "empty tensor name");
  expect_error([&] { write_safetensors(path, {{"__metadata__", ramp({2})}}); }, "reserved");
  expect_error([&] { write_safetensors(path, {{"u", Tensor()}}); }, "undefined");
  expect_error(
      [&] {
        write_safetensors(path, {{"t", ramp({2, 3}).transpose(0, 1)}});
      },
      "not contiguous");
  expect_error([&] { write_safetensors(path, {{"\xff", ramp({2})}}); }, "cannot encode header");
  EXPECT_FALSE(fs::exists(path)) << "a failed write left a file";
  expect_error(
      [&] {
        write_safetensors(dir.file("no/such/dir/x"), {{"a", ramp({2})}});
      },
      "cannot create");
  // Overwriting replaces the file whole; no temporaries are left behind.
  write_safetensors(path, {{"a", ramp({100})}});
  write_safetensors(path, {{"b", ramp({2})}});
  const auto f = SafetensorsFile::open(path);
  EXPECT_EQ(f.names(), std::vector<std::string>({"b"}));
  int files = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(fs::path(path).parent_path()))
    ++files;
  EXPECT_EQ(files, 1);
}

// ---------------------------------------------------------------- golden file

TEST(Safetensors, GoldenMoeFileHasExpectedKeys) {
  const std::string path = DELTAMOE_SOURCE_DIR "/tests/golden/moe_golden.safetensors";
  if (!fs::exists(path)) GTEST_SKIP() << path << " not generated";
  const auto f = SafetensorsFile::open(path);
  const auto& md = f.metadata();
  std::vector<std::string> cases;
  std::stringstream list(md.at("cases"));
  for (std::string c; std::getline(list, c, ',');) cases.push_back(c);
  EXPECT_EQ(cases, std::vector<std::string>({"swiglu", "gelu", "swiglu_k3"}));
  for (const std::string& c : cases) {
    const bool swiglu = md.at(c + ".expert_kind") == "swiglu";
    const int64_t t = std::stoll(md.at(c + ".tokens")), h = std::stoll(md.at(c + ".hidden"));
    const int64_t i = std::stoll(md.at(c + ".inter")), e = std::stoll(md.at(c + ".experts"));
    const int64_t k = std::stoll(md.at(c + ".top_k"));
    EXPECT_EQ(f.get(c + ".router").shape(), Shape({e, h}));
    EXPECT_EQ(f.get(c + ".x").shape(), Shape({t, h}));
    EXPECT_EQ(f.get(c + ".y").shape(), Shape({t, h}));
    EXPECT_EQ(f.get(c + ".topk_idx").shape(), Shape({t, k}));
    EXPECT_EQ(f.get(c + ".topk_idx").dtype(), DType::i32);
    EXPECT_EQ(f.get(c + ".topk_w").shape(), Shape({t, k}));
    for (int64_t x = 0; x < e; ++x) {
      const std::string s = std::to_string(x);
      EXPECT_EQ(f.get(c + ".w1." + s).shape(), Shape({i, h}));
      EXPECT_EQ(f.get(c + ".w2." + s).shape(), Shape({h, i}));
      if (swiglu) {
        EXPECT_EQ(f.get(c + ".w3." + s).shape(), Shape({i, h}));
      } else {
        EXPECT_EQ(f.get(c + ".b1." + s).shape(), Shape({i}));
        EXPECT_EQ(f.get(c + ".b2." + s).shape(), Shape({h}));
      }
    }
    // Routing weights: renormalised rows sum to 1; otherwise they are softmax probabilities
    // in descending order.
    const auto w = f.get(c + ".topk_w").to_vector();
    const auto idx = f.get(c + ".topk_idx");
    for (int64_t r = 0; r < t; ++r) {
      float sum = 0;
      for (int64_t j = 0; j < k; ++j) {
        sum += w[r * k + j];
        if (j > 0) {
          EXPECT_LE(w[r * k + j], w[r * k + j - 1]);
        }
        const int32_t ex = idx.data<int32_t>()[r * k + j];
        EXPECT_TRUE(ex >= 0 && ex < e);
        EXPECT_EQ(md.at(c + ".empty_experts").find(std::to_string(ex)), std::string::npos)
            << c << ": token " << r << " routed to an expert listed as empty";
      }
      if (md.at(c + ".renormalize") == "true") {
        EXPECT_NEAR(sum, 1.0f, 1e-5f);
      } else {
        EXPECT_LT(sum, 1.0f + 1e-5f);
      }
    }
  }
}

// ---------------------------------------------------------------- IDX

namespace {
std::vector<uint8_t> pattern(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> v(n);
  for (auto& b : v) b = static_cast<uint8_t>(rng());
  return v;
}
std::string be32(uint32_t v) {
  return {static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8),
          static_cast<char>(v)};
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
}  // namespace

TEST(Idx, RoundTripPlainAndGzip) {
  TempDir dir;
  for (bool gz : {false, true}) {
    const std::string img = dir.file(gz ? "i.gz" : "i"), lab = dir.file(gz ? "l.gz" : "l");
    const auto pixels = pattern(5 * 3 * 4, 1);
    write_idx(img, {5, 3, 4}, pixels, gz);
    write_idx(lab, {5}, {0, 9, 3, 3, 1}, gz);
    EXPECT_EQ(read_bytes(img).substr(0, 2) == "\x1f\x8b", gz);
    const IdxArray a = read_idx(img, 3);
    EXPECT_EQ(a.dims, std::vector<int64_t>({5, 3, 4}));
    EXPECT_EQ(a.data, pixels);
    const ImageSplit s = load_idx_split(img, lab, 10);
    EXPECT_EQ(s.images.shape(), Shape({5, 12}));
    EXPECT_EQ(s.rows, 3);
    EXPECT_EQ(s.cols, 4);
    EXPECT_FLOAT_EQ(s.images.at({2, 7}), pixels[2 * 12 + 7] / 255.0f);
    EXPECT_EQ(s.labels.dtype(), DType::i32);
    EXPECT_EQ(s.labels.data<int32_t>()[1], 9);
    // The magic decides, not the name: a gzip file without .gz and vice versa.
    EXPECT_EQ(read_idx(img).data, pixels);
  }
  // Zero images is a valid (empty) file.
  write_idx(dir.file("z"), {0, 28, 28}, {}, true);
  EXPECT_EQ(read_idx(dir.file("z"), 3).data.size(), 0u);
}

TEST(Idx, HandMadeBytes) {
  TempDir dir;
  const std::string raw = std::string("\0\0\x08\x01", 4) + be32(3) + "\x01\x02\x07";
  write_bytes(dir.file("a"), raw);
  write_bytes(dir.file("a.gz"), gzip_bytes(raw));
  for (const char* n : {"a", "a.gz"}) {
    const IdxArray a = read_idx(dir.file(n), 1);
    EXPECT_EQ(a.dims, std::vector<int64_t>({3}));
    EXPECT_EQ(a.data, std::vector<uint8_t>({1, 2, 7}));
  }
}

TEST(Idx, EveryError) {
  TempDir dir;
  const std::string p = dir.file("bad");
  const std::string good =
      std::string("\0\0\x08\x03", 4) + be32(2) + be32(2) + be32(3) + std::string(12, '\x05');
  auto check = [&](const std::string& bytes, const std::string& needle) {
    for (bool gz : {false, true}) {
      write_bytes(p, gz ? gzip_bytes(bytes) : bytes);
      expect_error([&] { read_idx(p, 3); }, needle);
    }
  };
  write_bytes(p, good);
  EXPECT_NO_THROW(read_idx(p, 3));
  expect_error([&] { read_idx(dir.file("nope")); }, "[idx] " + dir.file("nope") + ": cannot open");
  check("", "too short for the 4-byte IDX magic");
  check("\0\0", "too short");
  check(std::string("\x01\0\x08\x03", 4) + good.substr(4), "bad IDX magic 0x1000803");
  check(std::string("\0\0\x0d\x03", 4) + good.substr(4), "element type 0xd is not supported");
  check(std::string("\0\0\x08\x00", 4), "declares 0 dimensions");
  check(std::string("\0\0\x08\x09", 4), "declares 9 dimensions");
  check(std::string("\0\0\x08\x01", 4) + be32(0),
        "expected 3 dimensions (magic 0x00000803), found 1");
  check(good.substr(0, 10), "file ends inside the header");
  check(std::string("\0\0\x08\x03", 4) + be32(0xffffffff) + be32(0xffffffff) + be32(2),
        "exceed the limit");
  check(good.substr(0, good.size() - 1), "truncated");
  write_bytes(p, good + "x");
  expect_error([&] { read_idx(p); }, "need 12 data bytes but the file has 13");
  write_bytes(p, gzip_bytes(good + "x"));
  expect_error([&] { read_idx(p); }, "trailing data after the 12 bytes");
  // Corrupt gzip: a truncated stream and a flipped CRC.
  const std::string gz = gzip_bytes(good);
  write_bytes(p, gz.substr(0, gz.size() - 6));
  expect_error([&] { read_idx(p); }, "gzip");
  std::string crc = gz;
  crc[crc.size() - 8] ^= 0x55;
  write_bytes(p, crc);
  expect_error([&] { read_idx(p); }, "corrupt gzip stream");
  // Labels out of range and count mismatch.
  write_idx(dir.file("img"), {2, 1, 1}, {0, 255}, false);
  write_idx(dir.file("lab"), {2}, {3, 10}, false);
  expect_error([&] { load_idx_split(dir.file("img"), dir.file("lab"), 10); },
               "label 10 at index 1 is outside 0..9");
  write_idx(dir.file("lab"), {3}, {0, 1, 2}, false);
  expect_error([&] { load_idx_split(dir.file("img"), dir.file("lab"), 10); },
               "3 labels for 2 images");
  expect_error([&] { write_idx(p, {2, 2}, {1, 2, 3}, false); }, "do not match");
}

TEST(FashionMnist, MissingFileNamesThePackage) {
  TempDir dir;
  const std::string d = dir.file("");
  expect_error([&] { load_fashion_mnist(d); },
               "[data] " + dir.file("train-images-idx3-ubyte.gz") +
                   " not found: install the Debian package dataset-fashion-mnist "
                   "(scripts/install-deps.sh does)");
}

TEST(FashionMnist, SmallDirectoryLoads) {
  TempDir dir;
  write_idx(dir.file("train-images-idx3-ubyte.gz"), {3, 28, 28}, pattern(3 * 784, 2), true);
  write_idx(dir.file("train-labels-idx1-ubyte.gz"), {3}, {0, 5, 9}, true);
  write_idx(dir.file("t10k-images-idx3-ubyte"), {1, 28, 28}, pattern(784, 3), false);  // plain
  write_idx(dir.file("t10k-labels-idx1-ubyte"), {1}, {4}, false);
  const FashionMnist fm = load_fashion_mnist(dir.file(""));
  EXPECT_EQ(fm.train.images.shape(), Shape({3, 784}));
  EXPECT_EQ(fm.test.images.shape(), Shape({1, 784}));
  EXPECT_EQ(fm.test.labels.data<int32_t>()[0], 4);
  write_idx(dir.file("t10k-images-idx3-ubyte"), {1, 14, 56}, pattern(784, 3), false);
  expect_error([&] { load_fashion_mnist(dir.file("")); }, "expected 28x28");
}

TEST(FashionMnist, RealData) {
  if (!fs::exists(std::string(kFashionMnistDir) + "/train-images-idx3-ubyte.gz"))
    GTEST_SKIP() << "Fashion-MNIST not installed";
  const FashionMnist fm = load_fashion_mnist();
  ASSERT_EQ(fm.train.images.shape(), Shape({60000, 784}));
  ASSERT_EQ(fm.test.images.shape(), Shape({10000, 784}));
  ASSERT_EQ(fm.train.labels.numel(), 60000);
  ASSERT_EQ(fm.test.labels.numel(), 10000);
  std::vector<int> counts(10, 0), test_counts(10, 0);
  for (int64_t i = 0; i < 60000; ++i) ++counts.at(fm.train.labels.data<int32_t>()[i]);
  for (int64_t i = 0; i < 10000; ++i) ++test_counts.at(fm.test.labels.data<int32_t>()[i]);
  EXPECT_EQ(counts, std::vector<int>(10, 6000));
  EXPECT_EQ(test_counts, std::vector<int>(10, 1000));
  float lo = 1, hi = 0;
  double sum = 0;
  const float* px = fm.train.images.data<float>();
  for (int64_t i = 0; i < fm.train.images.numel(); ++i) {
    lo = std::min(lo, px[i]);
    hi = std::max(hi, px[i]);
    sum += px[i];
  }
  EXPECT_EQ(lo, 0.0f);
  EXPECT_EQ(hi, 1.0f);
  // The training-set mean pixel of Fashion-MNIST is 0.2860 (a widely used normalisation).
  EXPECT_NEAR(sum / static_cast<double>(fm.train.images.numel()), 0.2860, 5e-4);
}

TEST(Safetensors, StreamingWriterMatchesWriteSafetensors) {
  TempDir dir;
  const Tensor a = ramp({3, 4}), b = ramp({5}).to(DType::bf16), c = ramp({2, 2}, 9.0f);
  write_safetensors(dir.file("whole.safetensors"), {{"b", b}, {"a", a}, {"c", c}}, {{"k", "v"}});
  {
    SafetensorsWriter w(
        dir.file("stream.safetensors"),
        {{"b", DType::bf16, {5}}, {"a", DType::f32, {3, 4}}, {"c", DType::f32, {2, 2}}},
        {{"k", "v"}});
    // Larger elements first, then declaration order.
    EXPECT_EQ(w.order(), (std::vector<size_t>{1, 2, 0}));
    EXPECT_EQ(w.next()->name, "a");
    w.append(a);
    w.append_bytes(c.raw(), c.nbytes());
    expect_error([&] { w.commit(); }, "commit() before tensor 'b' was appended");
    expect_error([&] { w.append(a); }, "tensor 'b' is f32 [3, 4], declared bf16 [5]");
    w.append(b);
    EXPECT_EQ(w.next(), nullptr);
    expect_error([&] { w.append(b); }, "append() after the last tensor");
    w.commit();
    EXPECT_EQ(w.file_bytes(), fs::file_size(dir.file("stream.safetensors")));
  }
  EXPECT_EQ(read_bytes(dir.file("whole.safetensors")), read_bytes(dir.file("stream.safetensors")));
  // A writer dropped before commit() leaves nothing behind.
  {
    SafetensorsWriter w(dir.file("dropped.safetensors"), {{"a", DType::f32, {3, 4}}});
    expect_error([&] { w.append_bytes(a.raw(), 4); }, "tensor 'a' got 4 bytes, needs 48");
  }
  EXPECT_FALSE(fs::exists(dir.file("dropped.safetensors")));
  int files = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir.file(""))) ++files;
  EXPECT_EQ(files, 2);
}
