// Tensor: a typed, strided view into reference-counted, 64-byte aligned storage.
//
// Ownership: storage is shared (std::shared_ptr); copying a Tensor is cheap and aliases the
// same bytes. A Tensor may also wrap external memory it does not own (an mmapped file): the
// caller keeps that memory alive, optionally by passing a keep-alive handle.
// Thread-safety: a Tensor is a value; concurrent reads are fine, concurrent writes to the
// same elements are the caller's business.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "deltamoe/core/dtype.h"
#include "deltamoe/core/error.h"

namespace deltamoe {

/// Alignment of every buffer deltamoe allocates, in bytes (one cache line, one zmm register).
inline constexpr size_t kAlignment = 64;

/// Aligned heap buffer. Not copyable; owned through shared_ptr by Tensors.
class Storage {
 public:
  /// Allocates `bytes` (rounded up to kAlignment), zero-filled.
  explicit Storage(size_t bytes);
  /// Wraps external memory without owning it; `keep_alive` is held until destruction.
  /// `file_mapped`: the memory is a read-only mapping of a file (its pages can be dropped
  /// and are read again from the file when touched).
  Storage(void* data, size_t bytes, std::shared_ptr<const void> keep_alive,
          bool file_mapped = false);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  bool file_mapped() const { return file_mapped_; }
  /// Drops this process's pages of [begin, begin + bytes) (inside this storage) when the
  /// storage is a file mapping: whole pages inside the range only (a neighbour's bytes on a
  /// shared page stay), read again from the file when touched. Returns the bytes dropped (0
  /// for memory that is not a file mapping: dropping it would zero it). Resident memory falls;
  /// the page cache is untouched.
  size_t release_pages(const void* begin, size_t bytes) const;

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
  bool owned_ = false;
  bool file_mapped_ = false;
  std::shared_ptr<const void> keep_alive_;
};

/// Asks the kernel to back [addr, addr + bytes) with 2 MiB pages (madvise MADV_HUGEPAGE,
/// the whole 2 MiB pages inside the range). For a file mapping this makes page faults read
/// the file into 2 MiB page-cache folios and map them with one page-table entry each, where
/// the file system allows (ext4 and xfs on Linux 6.x); pages already cached in smaller
/// folios stay as they are. A hint: failure (no THP, THP "never") is ignored. Thread-safe.
void advise_huge_pages(void* addr, size_t bytes) noexcept;

using Shape = std::vector<int64_t>;

/// Returns "[2, 3, 4]".
std::string shape_str(const Shape& shape);
/// Product of the extents (1 for a scalar); throws Error("tensor") on negative or overflow.
int64_t shape_numel(const Shape& shape);

class Tensor {
 public:
  /// An empty tensor (no storage, numel 0, f32).
  Tensor() = default;
  /// New contiguous zero-filled tensor.
  Tensor(Shape shape, DType dtype = DType::f32);
  /// Wraps external memory (not owned; `keep_alive` keeps it valid). Contiguous.
  /// `file_mapped`: a read-only file mapping (Storage::file_mapped).
  static Tensor wrap(void* data, Shape shape, DType dtype,
                     std::shared_ptr<const void> keep_alive = nullptr, bool file_mapped = false);
  /// Copies `values` into a new f32 tensor of `shape` (sizes must agree).
  static Tensor from(const std::vector<float>& values, Shape shape);

  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  const Shape& strides() const { return strides_; }  // in elements
  int64_t dim() const { return static_cast<int64_t>(shape_.size()); }
  /// Extent of dimension `d` (negative counts from the end).
  int64_t size(int64_t d) const;
  int64_t numel() const { return numel_; }
  size_t nbytes() const { return static_cast<size_t>(numel_) * dtype_size(dtype_); }
  bool defined() const { return storage_ != nullptr; }
  bool is_contiguous() const;

  /// Pointer to the first element. T must match dtype (float for f32, int32_t for i32,
  /// uint16_t for bf16/f16); checked.
  template <typename T>
  T* data() const {
    check_type(sizeof(T), type_tag<T>());
    return reinterpret_cast<T*>(raw());
  }
  /// Untyped pointer to the first element.
  void* raw() const;

  /// View of rows [begin, end) along dimension 0.
  Tensor slice(int64_t begin, int64_t end) const;
  /// Storage::release_pages over this tensor's bytes: drops this process's pages of a view of
  /// a file mapping (e.g. once a copy was made from it); nothing for memory of its own.
  /// Returns the bytes dropped.
  size_t release_pages() const;
  /// View with a new shape; the tensor must be contiguous. One extent may be -1.
  Tensor reshape(Shape shape) const;
  /// View with dimensions a and b swapped (not contiguous afterwards).
  Tensor transpose(int64_t a, int64_t b) const;
  /// Deep copy into new contiguous storage.
  Tensor clone() const;
  /// Converts to another dtype (new storage; same dtype still copies).
  Tensor to(DType dtype) const;
  /// Writes the elements, in row-major order and converted to `dtype`, to `dst` (numel() ·
  /// dtype_size(dtype) bytes, not owned, not overlapping this tensor): to() without the new
  /// storage. Contiguous bf16 / f16 <-> f32 conversions run on all threads (when called outside
  /// a parallel region).
  void convert_into(void* dst, DType dtype) const;
  /// Copies element values into a vector of float (any dtype, any strides).
  std::vector<float> to_vector() const;
  /// Element at a multi-index, as float (slow; for tests and debugging).
  float at(std::initializer_list<int64_t> index) const;
  /// Fills every element with `value`.
  void fill(float value);

  const std::shared_ptr<Storage>& storage() const { return storage_; }

 private:
  template <typename T>
  static int type_tag();
  void check_type(size_t elem_size, int tag) const;

  std::shared_ptr<Storage> storage_;
  DType dtype_ = DType::f32;
  Shape shape_;
  Shape strides_;
  int64_t offset_ = 0;  // in elements
  int64_t numel_ = 0;
};

/// Row-major contiguous strides for `shape`.
Shape contiguous_strides(const Shape& shape);

}  // namespace deltamoe
