// safetensors: reading (memory-mapped, validated) and writing.
//
// Format (https://github.com/huggingface/safetensors): an 8-byte little-endian header length
// N, N bytes of JSON header, then the data buffer. The header is an object mapping tensor
// names to {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]} (byte offsets
// into the data buffer) plus an optional "__metadata__" object of string → string.
//
// The reader trusts nothing in the file: every length, offset, shape and dtype is checked
// before any tensor is handed out, and a bad file gives one deltamoe::Error line of the form
//   [safetensors] <path>: tensor 'x': data_offsets [0, 99] exceed data size 64
// Supported dtypes: F32, BF16, F16, I32 (others are reported by name, not skipped).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "deltamoe/core/tensor.h"

namespace deltamoe::io {

/// Largest header the reader accepts, in bytes (the reference implementation's limit).
inline constexpr uint64_t kSafetensorsMaxHeaderBytes = 100'000'000;

/// One tensor's entry in the header, validated.
struct SafetensorsEntry {
  std::string name;
  DType dtype = DType::f32;
  Shape shape;
  uint64_t begin = 0;  // byte offset into the data buffer (after the header)
  uint64_t end = 0;    // one past the last byte; end - begin == numel × dtype size
};

/// A read-only memory-mapped safetensors file.
///
/// Ownership: the mapping is held by a shared handle. Copies of a SafetensorsFile and every
/// Tensor returned by get() share it, so tensors stay valid after the SafetensorsFile is
/// destroyed; the file is unmapped when the last of them goes.
/// The mapping is PROT_READ: tensors returned by get() that alias it are read-only (writing
/// through them faults). clone() a tensor before modifying it. As with any mapping, a file
/// truncated by another process while mapped makes later reads of the lost pages fault
/// (SIGBUS); write files atomically (as write_safetensors does) instead of in place.
/// Thread-safety: all methods are const and safe to call concurrently.
class SafetensorsFile {
 public:
  /// Maps and validates `path`. Throws Error("safetensors") naming the path (and the tensor,
  /// when one entry is at fault) on any I/O or format problem.
  static SafetensorsFile open(const std::string& path);

  /// The path given to open().
  const std::string& path() const { return path_; }
  /// Tensor names in data-buffer order (by begin offset, then name); excludes __metadata__.
  std::vector<std::string> names() const;
  /// Whether a tensor called `name` exists.
  bool has(const std::string& name) const;
  /// The validated header entry of `name`; throws Error("safetensors") if absent.
  const SafetensorsEntry& entry(const std::string& name) const;
  /// All entries, in data-buffer order.
  const std::vector<SafetensorsEntry>& entries() const { return entries_; }
  /// A contiguous tensor with the file's dtype and shape. Zero-copy (a read-only view of the
  /// mapping) when the data is aligned to the dtype's size; otherwise an owned copy, since
  /// misaligned float loads are undefined behaviour in C++. Throws Error if absent.
  Tensor get(const std::string& name) const;
  /// The "__metadata__" map (empty when the file has none).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  /// The whole mapped file (for bounds checks in tests and for diagnostics).
  const uint8_t* file_data() const;
  /// Size of the file in bytes.
  size_t file_size() const;
  /// Byte offset of the data buffer in the file (8 + header length).
  size_t data_offset() const { return data_offset_; }

 private:
  struct Mapping;
  SafetensorsFile() = default;

  std::string path_;
  std::shared_ptr<const Mapping> mapping_;
  size_t data_offset_ = 0;
  std::vector<SafetensorsEntry> entries_;       // sorted by (begin, name)
  std::map<std::string, size_t> index_;         // name → position in entries_
  std::map<std::string, std::string> metadata_;
};

namespace detail {
class AtomicFile;
}

/// Name, dtype and shape of one tensor to be written by SafetensorsWriter.
struct SafetensorsTensorSpec {
  std::string name;
  DType dtype = DType::f32;
  Shape shape;
};

/// Writes a safetensors file one tensor at a time, so that files larger than memory can be
/// produced (the header is computed from the specs up front, the data streamed after it).
///
/// Layout as write_safetensors (which is built on this class): header padded to 8 bytes, data
/// by decreasing element size, then declaration order. Call append() once per tensor in
/// order() order, then commit(). The file is written under a temporary name and renamed onto
/// `path` by commit(); a writer destroyed before commit() leaves nothing at `path`.
/// Errors: Error("safetensors") naming the path (bad names, a tensor that does not match
/// the next spec, I/O failures). Not thread-safe.
class SafetensorsWriter {
 public:
  /// Validates the specs (names unique, non-empty, not "__metadata__"; shapes valid) and
  /// opens the temporary file.
  SafetensorsWriter(std::string path, std::vector<SafetensorsTensorSpec> specs,
                    const std::map<std::string, std::string>& metadata = {});
  ~SafetensorsWriter();
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;

  /// Indices into the specs, in the order append() expects the tensors.
  const std::vector<size_t>& order() const { return order_; }
  /// The spec the next append() must match; nullptr when every tensor was appended.
  const SafetensorsTensorSpec* next() const;
  /// Appends the data of the next tensor; `t` must be contiguous with the next spec's dtype
  /// and shape.
  void append(const Tensor& t);
  /// Appends raw bytes of the next tensor (exactly its size in bytes; for callers that
  /// produce data without a Tensor).
  void append_bytes(const void* data, size_t bytes);
  /// Size of the finished file in bytes (header included).
  uint64_t file_bytes() const { return file_bytes_; }
  /// fsyncs and renames onto the final path. Every tensor must have been appended.
  void commit();

 private:
  std::string path_;
  std::vector<SafetensorsTensorSpec> specs_;
  std::vector<size_t> order_;
  size_t appended_ = 0;
  uint64_t file_bytes_ = 0;
  std::unique_ptr<detail::AtomicFile> out_;
};

/// Writes `tensors` (name, tensor) and `metadata` to `path` in safetensors format.
///
/// Tensors must be defined and contiguous; names must be unique, non-empty and not
/// "__metadata__" (Error("safetensors") otherwise). The header is padded with spaces to a
/// multiple of 8 bytes, and the data are laid out by decreasing element size (then in the
/// given order), so that every tensor is aligned to its element size in the file and reads
/// back zero-copy. The file is written atomically (temp file beside it, fsync, rename); on
/// failure no partial file is left at `path`. The Python `safetensors` package reads it.
void write_safetensors(const std::string& path,
                       const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

/// The safetensors dtype string for `dtype` ("F32", "BF16", "F16", "I32").
const char* safetensors_dtype_name(DType dtype);

}  // namespace deltamoe::io
