#include "deltamoe/io/idx.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>

#include "io/file_util.h"

namespace deltamoe::io {

namespace {

constexpr const char* kComponent = "idx";
constexpr int kMaxNdim = 8;
constexpr unsigned kChunk = 1u << 20;

struct GzCloser {
  void operator()(gzFile_s* f) const { gzclose(f); }
};
using GzPtr = std::unique_ptr<gzFile_s, GzCloser>;

// zlib's message for a gzdopen'ed file starts with "<fd:N>: "; the caller names the path.
std::string zlib_message(const char* msg) {
  std::string_view m(msg == nullptr ? "unknown error" : msg);
  if (m.rfind("<fd:", 0) == 0) {
    const size_t colon = m.find(": ");
    if (colon != std::string_view::npos) m.remove_prefix(colon + 2);
  }
  return detail::one_line(m);
}

// Reads up to `len` bytes; returns the count (short only at end of data). Throws on a zlib
// error (corrupt or truncated gzip stream, CRC mismatch).
size_t gz_read_some(gzFile f, uint8_t* out, size_t len, const std::string& path, bool gzip) {
  size_t got = 0;
  while (got < len) {
    const unsigned want = static_cast<unsigned>(std::min<size_t>(len - got, kChunk));
    const int n = gzread(f, out + got, want);
    if (n < 0 || (n == 0 && !gzeof(f))) {
      int errnum = 0;
      const char* msg = gzerror(f, &errnum);
      fail(kComponent, path, ": ", gzip ? "corrupt gzip stream: " : "read error: ",
           errnum == Z_ERRNO ? std::strerror(errno) : zlib_message(msg));
    }
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  // zlib reports some stream errors (e.g. an unexpected end of a gzip member) only through
  // gzerror after returning the bytes it had.
  int errnum = Z_OK;
  const char* msg = gzerror(f, &errnum);
  if (errnum != Z_OK && errnum != Z_STREAM_END)
    fail(kComponent, path, ": ", gzip ? "corrupt gzip stream: " : "read error: ",
         zlib_message(msg));
  return got;
}

std::string join(const std::string& dir, const std::string& name) {
  if (dir.empty()) return name;
  return dir.back() == '/' ? dir + name : dir + "/" + name;
}

bool is_file(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

}  // namespace

IdxArray read_idx(const std::string& path, int expected_ndim) {
  auto bad = [&](auto&&... args) { fail(kComponent, path, ": ", args...); };

  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) bad("cannot open: ", std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    bad("not a regular file");
  }
  const auto file_size = static_cast<uint64_t>(st.st_size);
  uint8_t sig[2] = {0, 0};
  const bool gzip = ::pread(fd, sig, 2, 0) == 2 && sig[0] == 0x1f && sig[1] == 0x8b;
  // gzdopen reads non-gzip input transparently, so one code path serves both; the sniffed
  // magic only tunes the messages and the size pre-check.
  GzPtr f(gzdopen(fd, "rb"));
  if (!f) {
    ::close(fd);
    bad("cannot open for reading (out of memory)");
  }
  gzbuffer(f.get(), 1u << 18);

  uint8_t magic[4];
  if (gz_read_some(f.get(), magic, 4, path, gzip) != 4)
    bad("file too short for the 4-byte IDX magic", gzip ? " (after gunzip)" : "");
  if (magic[0] != 0 || magic[1] != 0) {
    const unsigned m = unsigned{magic[0]} << 24 | unsigned{magic[1]} << 16 |
                       unsigned{magic[2]} << 8 | unsigned{magic[3]};
    bad("bad IDX magic 0x", std::hex, m, std::dec, " (expected 0x000008NN)");
  }
  if (magic[2] != 0x08)
    bad("IDX element type 0x", std::hex, static_cast<unsigned>(magic[2]), std::dec,
        " is not supported (only unsigned bytes, 0x08)");
  const int ndim = magic[3];
  if (ndim < 1 || ndim > kMaxNdim) bad("IDX magic declares ", ndim, " dimensions (1..8 allowed)");
  if (expected_ndim > 0 && ndim != expected_ndim)
    bad("expected ", expected_ndim, " dimensions (magic 0x0000080", expected_ndim, "), found ",
        ndim);

  uint8_t raw_dims[4 * kMaxNdim];
  const size_t dim_bytes = 4 * static_cast<size_t>(ndim);
  if (gz_read_some(f.get(), raw_dims, dim_bytes, path, gzip) != dim_bytes)
    bad("file ends inside the header (", ndim, " dimensions need ", dim_bytes, " bytes)");
  IdxArray out;
  uint64_t total = 1;
  for (int d = 0; d < ndim; ++d) {
    const uint8_t* p = raw_dims + 4 * d;
    const uint64_t extent = uint64_t{p[0]} << 24 | uint64_t{p[1]} << 16 | uint64_t{p[2]} << 8 | p[3];
    out.dims.push_back(static_cast<int64_t>(extent));
    if (__builtin_mul_overflow(total, extent, &total) || total > kIdxMaxBytes)
      bad("dimensions ", shape_str(out.dims), "... exceed the limit of ", kIdxMaxBytes, " bytes");
  }
  const uint64_t header_bytes = 4 + dim_bytes;
  if (!gzip && file_size - header_bytes != total)
    bad("dimensions ", shape_str(out.dims), " need ", total, " data bytes but the file has ",
        file_size - header_bytes, file_size - header_bytes < total ? " (truncated)" : "");

  // Grow as data arrives instead of trusting the header: a corrupt gzip header cannot make us
  // allocate gigabytes that the stream does not contain.
  size_t got = 0;
  while (got < total) {
    const size_t want = std::min<uint64_t>(total - got, std::max<size_t>(got, kChunk));
    out.data.resize(got + want);
    const size_t n = gz_read_some(f.get(), out.data.data() + got, want, path, gzip);
    got += n;
    if (n < want)
      bad("data ends after ", got, " of ", total, " bytes declared by dimensions ",
          shape_str(out.dims), " (truncated)");
  }
  uint8_t extra = 0;
  if (gz_read_some(f.get(), &extra, 1, path, gzip) != 0)
    bad("trailing data after the ", total, " bytes declared by dimensions ", shape_str(out.dims));
  return out;
}

void write_idx(const std::string& path, const std::vector<int64_t>& dims,
               const std::vector<uint8_t>& data, bool gzip) {
  auto bad = [&](auto&&... args) { fail(kComponent, path, ": ", args...); };
  if (dims.empty() || dims.size() > kMaxNdim) bad(dims.size(), " dimensions (1..8 allowed)");
  std::string bytes = {0, 0, 0x08, static_cast<char>(dims.size())};
  uint64_t total = 1;
  for (int64_t d : dims) {
    if (d < 0 || d > int64_t{0xffffffff}) bad("dimension ", d, " outside [0, 2^32)");
    total *= static_cast<uint64_t>(d);  // ≤ 8 factors < 2^32 can overflow only past data.size()
    for (int s = 24; s >= 0; s -= 8) bytes.push_back(static_cast<char>((d >> s) & 0xff));
  }
  if (total != data.size())
    bad(data.size(), " bytes do not match dimensions ", shape_str(dims));
  if (!data.empty()) bytes.append(reinterpret_cast<const char*>(data.data()), data.size());

  if (gzip) {
    z_stream zs{};
    // windowBits 15 + 16: a gzip wrapper rather than zlib's own.
    if (deflateInit2(&zs, Z_DEFAULT_COMPRESSION, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK)
      bad("deflateInit2 failed");
    std::string packed(deflateBound(&zs, bytes.size()), '\0');
    zs.next_in = reinterpret_cast<Bytef*>(bytes.data());
    zs.avail_in = static_cast<uInt>(bytes.size());
    zs.next_out = reinterpret_cast<Bytef*>(packed.data());
    zs.avail_out = static_cast<uInt>(packed.size());
    const int rc = deflate(&zs, Z_FINISH);
    packed.resize(zs.total_out);
    deflateEnd(&zs);
    if (rc != Z_STREAM_END) bad("gzip compression failed (", rc, ")");
    bytes = std::move(packed);
  }
  detail::AtomicFile out(path, kComponent);
  out.write(bytes.data(), bytes.size());
  out.commit();
}

ImageSplit load_idx_split(const std::string& images_path, const std::string& labels_path,
                          int classes) {
  const IdxArray images = read_idx(images_path, 3);
  const IdxArray labels = read_idx(labels_path, 1);
  const int64_t n = images.dims[0];
  if (labels.dims[0] != n)
    fail("data", labels_path, ": ", labels.dims[0], " labels for ", n, " images in ", images_path);
  ImageSplit s;
  s.rows = images.dims[1];
  s.cols = images.dims[2];
  const int64_t pixels = s.rows * s.cols;
  s.images = Tensor({n, pixels}, DType::f32);
  s.labels = Tensor({n}, DType::i32);
  float* img = s.images.data<float>();
  for (size_t i = 0; i < images.data.size(); ++i)
    img[i] = static_cast<float>(images.data[i]) * (1.0f / 255.0f);
  int32_t* lab = s.labels.data<int32_t>();
  for (int64_t i = 0; i < n; ++i) {
    const int v = labels.data[static_cast<size_t>(i)];
    if (v >= classes)
      fail("data", labels_path, ": label ", v, " at index ", i, " is outside 0..", classes - 1);
    lab[i] = v;
  }
  return s;
}

FashionMnist load_fashion_mnist(const std::string& dir) {
  auto find = [&](const std::string& stem) {
    const std::string gz = join(dir, stem + ".gz");
    if (is_file(gz)) return gz;
    const std::string plain = join(dir, stem);
    if (is_file(plain)) return plain;
    fail("data", gz,
         " not found: install the Debian package dataset-fashion-mnist (scripts/install-deps.sh"
         " does)");
  };
  // All four looked up first, in a fixed order, so the error names the first missing one.
  const std::string train_images = find("train-images-idx3-ubyte");
  const std::string train_labels = find("train-labels-idx1-ubyte");
  const std::string test_images = find("t10k-images-idx3-ubyte");
  const std::string test_labels = find("t10k-labels-idx1-ubyte");
  FashionMnist fm;
  fm.train = load_idx_split(train_images, train_labels, FashionMnist::kClasses);
  fm.test = load_idx_split(test_images, test_labels, FashionMnist::kClasses);
  for (const auto* s : {&fm.train, &fm.test})
    if (s->rows != 28 || s->cols != 28)
      fail("data", dir, ": Fashion-MNIST images are ", s->rows, "x", s->cols, ", expected 28x28");
  return fm;
}

}  // namespace deltamoe::io
