// IDX files (the MNIST / Fashion-MNIST format) and the Fashion-MNIST loader.
//
// An IDX file is a 4-byte magic (0x00, 0x00, type code, number of dimensions), one
// big-endian uint32 per dimension, then the elements in row-major order. Only unsigned-byte
// data (type code 0x08) is supported: 0x00000801 for labels [N], 0x00000803 for images
// [N, rows, cols]. Files may be gzip-compressed (detected by the gzip magic 1f 8b, not by
// the file name). Every read is checked: magic, dimensions, and that the data length
// matches the dimensions exactly; a bad file gives one deltamoe::Error line naming the path.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "deltamoe/core/tensor.h"

namespace deltamoe::io {

/// Largest element count read_idx accepts (4 GiB): guards against a corrupt header asking
/// for terabytes, while being 80× the largest Fashion-MNIST file.
inline constexpr uint64_t kIdxMaxBytes = uint64_t{1} << 32;

/// Where the Debian package dataset-fashion-mnist installs the data.
inline constexpr const char* kFashionMnistDir = "/usr/share/datasets/fashion-mnist";

/// A decoded IDX file of unsigned bytes.
struct IdxArray {
  std::vector<int64_t> dims;  // extents, outermost first
  std::vector<uint8_t> data;  // product(dims) bytes, row-major
};

/// Reads an IDX file of unsigned bytes (plain or gzip). If `expected_ndim` > 0, the file must
/// have that many dimensions. Throws Error("idx") naming the path on a missing, truncated,
/// corrupt or oversized file, a wrong magic, or trailing data after the last element.
IdxArray read_idx(const std::string& path, int expected_ndim = 0);

/// Writes an IDX file of unsigned bytes, gzip-compressed if `gzip`; atomically (temp file and
/// rename). Throws Error("idx") if data.size() does not match dims or a dimension is outside
/// [0, 2^32), or on I/O failure. Used by tests and for exporting data sets.
void write_idx(const std::string& path, const std::vector<int64_t>& dims,
               const std::vector<uint8_t>& data, bool gzip);

/// One split of an image classification data set.
struct ImageSplit {
  Tensor images;  // f32 [N, rows·cols], pixel / 255, in [0, 1]
  Tensor labels;  // i32 [N]
  int64_t rows = 0, cols = 0;
};

/// Fashion-MNIST: 10 classes of 28×28 grey-scale clothing images.
struct FashionMnist {
  ImageSplit train;  // 60 000 images
  ImageSplit test;   // 10 000 images
  static constexpr int kClasses = 10;
};

/// Loads an image/label pair of IDX files (images [N, R, C], labels [N] with values below
/// `classes`). Throws Error naming the file when the counts disagree or a label is out of range.
ImageSplit load_idx_split(const std::string& images_path, const std::string& labels_path,
                          int classes);

/// Loads Fashion-MNIST from `dir` (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz,
/// t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz; the uncompressed names without .gz
/// are accepted too). A missing file gives Error("data") saying which Debian package to
/// install. Takes ~0.5 s and ~220 MB. Thread-safe (no shared state).
FashionMnist load_fashion_mnist(const std::string& dir = kFashionMnistDir);

}  // namespace deltamoe::io
