#include "deltamoe/core/tensor.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>

#include "deltamoe/core/parallel.h"
#endif

namespace deltamoe {

Storage::Storage(size_t bytes) : bytes_(bytes), owned_(true) {
  // Large buffers (expert weights, activations of big batches) go on 2 MiB pages where the
  // kernel allows it (THP "madvise" mode is Debian's default): streaming a 4 MiB expert
  // through 4 KiB pages costs a TLB miss and a hardware-prefetcher restart every 4 KiB, which
  // is most of what separates decode from the memory-bandwidth roofline.
  // From 1 MiB up (a bf16 expert matrix of 1024 x 512 is exactly 1 MiB) the buffer is
  // rounded up to whole 2 MiB pages: at most 2x the memory for 1-2 MiB tensors, negligible
  // above. On 4 KiB pages such a matrix streamed 25% slower at decode.
  constexpr size_t kHuge = size_t{2} << 20;
  const size_t align = bytes >= kHuge / 2 ? kHuge : kAlignment;
  const size_t rounded = ((bytes + align - 1) / align) * align;
  data_ = std::aligned_alloc(align, rounded == 0 ? align : rounded);
  if (data_ == nullptr) fail("tensor", "out of memory allocating ", bytes, " bytes");
  if (align == kHuge) advise_huge_pages(data_, rounded);
  // Zeroing touches every page first: on all threads for large buffers (a model's converted
  // weights), whose first touch is mostly the kernel clearing pages.
  const size_t total = rounded == 0 ? align : rounded;
  const int64_t chunks = static_cast<int64_t>((total + kHuge - 1) / kHuge);
  parallel_for(chunks, 16, [&](int64_t b, int64_t e) {
    const size_t lo = static_cast<size_t>(b) * kHuge;
    const size_t hi = std::min(total, static_cast<size_t>(e) * kHuge);
    std::memset(static_cast<char*>(data_) + lo, 0, hi - lo);
  });
}

Storage::Storage(void* data, size_t bytes, std::shared_ptr<const void> keep_alive, bool file_mapped)
    : data_(data),
      bytes_(bytes),
      owned_(false),
      file_mapped_(file_mapped),
      keep_alive_(std::move(keep_alive)) {}

Storage::~Storage() {
  if (owned_) std::free(data_);
}

void advise_huge_pages(void* addr, size_t bytes) noexcept {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  const auto b = reinterpret_cast<uintptr_t>(addr);
  const uintptr_t first = (b + kHuge - 1) / kHuge * kHuge, last = (b + bytes) / kHuge * kHuge;
  if (last > first) (void)::madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#else
  (void)addr;
  (void)bytes;
#endif
}

size_t Storage::release_pages(const void* begin, size_t bytes) const {
  if (!file_mapped_ || bytes == 0) return 0;
  const auto* b0 = static_cast<const char*>(begin);
  DELTAMOE_ASSERT(b0 >= static_cast<const char*>(data_) &&
                      b0 + bytes <= static_cast<const char*>(data_) + bytes_,
                  "release_pages: ", bytes, " bytes outside the storage's ", bytes_);
#if defined(__linux__)
  const auto page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const auto b = reinterpret_cast<uintptr_t>(begin);
  const uintptr_t first = (b + page - 1) / page * page, last = (b + bytes) / page * page;
  if (last <= first) return 0;
  if (::madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED) != 0) return 0;
  return last - first;
#else
  return 0;
#endif
}

std::string shape_str(const Shape& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    DELTAMOE_CHECK(d >= 0, "tensor", "negative extent in shape ", shape_str(shape));
    if (d != 0 && n > std::numeric_limits<int64_t>::max() / d)
      fail("tensor", "shape ", shape_str(shape), " overflows int64");
    n *= d;
  }
  return n;
}

Shape contiguous_strides(const Shape& shape) {
  Shape strides(shape.size());
  int64_t s = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    strides[i] = s;
    s *= shape[i] == 0 ? 1 : shape[i];
  }
  return strides;
}

Tensor::Tensor(Shape shape, DType dtype)
    : dtype_(dtype), shape_(std::move(shape)), strides_(contiguous_strides(shape_)) {
  numel_ = shape_numel(shape_);
  storage_ = std::make_shared<Storage>(static_cast<size_t>(numel_) * dtype_size(dtype_));
}

Tensor Tensor::wrap(void* data, Shape shape, DType dtype, std::shared_ptr<const void> keep_alive,
                    bool file_mapped) {
  Tensor t;
  t.dtype_ = dtype;
  t.shape_ = std::move(shape);
  t.strides_ = contiguous_strides(t.shape_);
  t.numel_ = shape_numel(t.shape_);
  t.storage_ = std::make_shared<Storage>(data, static_cast<size_t>(t.numel_) * dtype_size(dtype),
                                         std::move(keep_alive), file_mapped);
  return t;
}

Tensor Tensor::from(const std::vector<float>& values, Shape shape) {
  Tensor t(std::move(shape), DType::f32);
  DELTAMOE_CHECK(static_cast<int64_t>(values.size()) == t.numel(), "tensor", values.size(),
                 " values do not fill shape ", shape_str(t.shape()));
  std::memcpy(t.raw(), values.data(), values.size() * sizeof(float));
  return t;
}

int64_t Tensor::size(int64_t d) const {
  const int64_t nd = dim();
  if (d < 0) d += nd;
  DELTAMOE_CHECK(d >= 0 && d < nd, "tensor", "dimension ", d, " out of range for shape ",
                 shape_str(shape_));
  return shape_[static_cast<size_t>(d)];
}

bool Tensor::is_contiguous() const {
  return strides_ == contiguous_strides(shape_);
}

void* Tensor::raw() const {
  if (!storage_) return nullptr;
  return static_cast<char*>(storage_->data()) + offset_ * static_cast<int64_t>(dtype_size(dtype_));
}

template <>
int Tensor::type_tag<float>() {
  return 0;
}
template <>
int Tensor::type_tag<int32_t>() {
  return 1;
}
template <>
int Tensor::type_tag<uint16_t>() {
  return 2;
}
template <>
int Tensor::type_tag<const float>() {
  return 0;
}
template <>
int Tensor::type_tag<const int32_t>() {
  return 1;
}
template <>
int Tensor::type_tag<const uint16_t>() {
  return 2;
}

void Tensor::check_type(size_t elem_size, int tag) const {
  const int want = dtype_ == DType::f32 ? 0 : dtype_ == DType::i32 ? 1 : 2;
  if (tag != want || elem_size != dtype_size(dtype_))
    fail("tensor", "data<T>() with the wrong element type for a ", dtype_name(dtype_), " tensor");
}

size_t Tensor::release_pages() const {
  return defined() && storage_ ? storage_->release_pages(raw(), nbytes()) : 0;
}

Tensor Tensor::slice(int64_t begin, int64_t end) const {
  DELTAMOE_CHECK(dim() >= 1, "tensor", "slice of a scalar");
  DELTAMOE_CHECK(0 <= begin && begin <= end && end <= shape_[0], "tensor", "slice [", begin, ", ",
                 end, ") out of range for shape ", shape_str(shape_));
  Tensor t = *this;
  t.shape_[0] = end - begin;
  t.offset_ = offset_ + begin * strides_[0];
  t.numel_ = shape_numel(t.shape_);
  return t;
}

Tensor Tensor::reshape(Shape shape) const {
  DELTAMOE_CHECK(is_contiguous(), "tensor", "reshape of a non-contiguous tensor");
  int64_t known = 1;
  int infer = -1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1) {
      DELTAMOE_CHECK(infer < 0, "tensor", "reshape with more than one -1");
      infer = static_cast<int>(i);
    } else {
      DELTAMOE_CHECK(shape[i] >= 0, "tensor", "negative extent in reshape");
      known *= shape[i];
    }
  }
  if (infer >= 0) {
    DELTAMOE_CHECK(known > 0 && numel_ % known == 0, "tensor", "cannot reshape ", shape_str(shape_),
                   " to ", shape_str(shape));
    shape[static_cast<size_t>(infer)] = numel_ / known;
  }
  DELTAMOE_CHECK(shape_numel(shape) == numel_, "tensor", "cannot reshape ", shape_str(shape_),
                 " to ", shape_str(shape));
  Tensor t = *this;
  t.shape_ = std::move(shape);
  t.strides_ = contiguous_strides(t.shape_);
  return t;
}

Tensor Tensor::transpose(int64_t a, int64_t b) const {
  const int64_t nd = dim();
  if (a < 0) a += nd;
  if (b < 0) b += nd;
  DELTAMOE_CHECK(a >= 0 && a < nd && b >= 0 && b < nd, "tensor", "transpose dims out of range");
  Tensor t = *this;
  std::swap(t.shape_[static_cast<size_t>(a)], t.shape_[static_cast<size_t>(b)]);
  std::swap(t.strides_[static_cast<size_t>(a)], t.strides_[static_cast<size_t>(b)]);
  return t;
}

namespace {
float load_as_float(const void* base, DType dt, int64_t i) {
  switch (dt) {
    case DType::f32:
      return static_cast<const float*>(base)[i];
    case DType::i32:
      return static_cast<float>(static_cast<const int32_t*>(base)[i]);
    case DType::bf16:
      return bf16_to_f32(static_cast<const uint16_t*>(base)[i]);
    case DType::f16:
      return f16_to_f32(static_cast<const uint16_t*>(base)[i]);
    case DType::int8:
      return static_cast<float>(static_cast<const int8_t*>(base)[i]);
  }
  return 0;
}
void store_from_float(void* base, DType dt, int64_t i, float v) {
  switch (dt) {
    case DType::f32:
      static_cast<float*>(base)[i] = v;
      break;
    case DType::i32:
      static_cast<int32_t*>(base)[i] = static_cast<int32_t>(v);
      break;
    case DType::bf16:
      static_cast<uint16_t*>(base)[i] = f32_to_bf16(v);
      break;
    case DType::f16:
      static_cast<uint16_t*>(base)[i] = f32_to_f16(v);
      break;
    case DType::int8:  // rounded and saturated; NaN becomes 0
      static_cast<int8_t*>(base)[i] =
          v == v ? static_cast<int8_t>(std::nearbyint(std::clamp(v, -128.0f, 127.0f))) : 0;
      break;
  }
}
// Calls f(linear_index, storage_offset) for every element in row-major order.
template <typename F>
void for_each_offset(const Shape& shape, const Shape& strides, F&& f) {
  const int64_t n = shape_numel(shape);
  if (n == 0) return;
  std::vector<int64_t> idx(shape.size(), 0);
  int64_t off = 0;
  for (int64_t i = 0; i < n; ++i) {
    f(i, off);
    for (size_t d = shape.size(); d-- > 0;) {
      if (++idx[d] < shape[d]) {
        off += strides[d];
        break;
      }
      off -= strides[d] * (shape[d] - 1);
      idx[d] = 0;
    }
  }
}
}  // namespace

Tensor Tensor::clone() const {
  return to(dtype_);
}

namespace {
// The common conversions of a contiguous tensor (checkpoint dtype <-> compute dtype at load),
// in chunks on all threads: element by element through load_as_float / store_from_float the
// reference model's bf16 -> f32 took a minute. The same values (the same conversion functions).
bool convert_contiguous(const void* src, DType from, void* dst, DType to, int64_t n) {
  const auto run = [&](auto convert) {
    parallel_for(n, int64_t{1} << 16, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) convert(i);
    });
    return true;
  };
  const auto* s16 = static_cast<const uint16_t*>(src);
  const auto* s32 = static_cast<const float*>(src);
  auto* d16 = static_cast<uint16_t*>(dst);
  auto* d32 = static_cast<float*>(dst);
  if (from == DType::bf16 && to == DType::f32)
    return run([&](int64_t i) { d32[i] = bf16_to_f32(s16[i]); });
  if (from == DType::f16 && to == DType::f32)
    return run([&](int64_t i) { d32[i] = f16_to_f32(s16[i]); });
  if (from == DType::f32 && to == DType::bf16)
    return run([&](int64_t i) { d16[i] = f32_to_bf16(s32[i]); });
  if (from == DType::f32 && to == DType::f16)
    return run([&](int64_t i) { d16[i] = f32_to_f16(s32[i]); });
  return false;
}
}  // namespace

Tensor Tensor::to(DType dtype) const {
  Tensor out(shape_, dtype);
  if (storage_) convert_into(out.raw(), dtype);
  return out;
}

void Tensor::convert_into(void* dst, DType dtype) const {
  if (!storage_) return;
  if (dtype == dtype_ && is_contiguous()) {
    std::memcpy(dst, raw(), nbytes());
    return;
  }
  if (is_contiguous() && convert_contiguous(raw(), dtype_, dst, dtype, numel_)) return;
  const void* src = raw();
  for_each_offset(shape_, strides_, [&](int64_t i, int64_t off) {
    store_from_float(dst, dtype, i, load_as_float(src, dtype_, off));
  });
}

std::vector<float> Tensor::to_vector() const {
  std::vector<float> v(static_cast<size_t>(numel_));
  if (!storage_) return v;
  const void* src = raw();
  for_each_offset(shape_, strides_, [&](int64_t i, int64_t off) {
    v[static_cast<size_t>(i)] = load_as_float(src, dtype_, off);
  });
  return v;
}

float Tensor::at(std::initializer_list<int64_t> index) const {
  DELTAMOE_CHECK(static_cast<int64_t>(index.size()) == dim(), "tensor", "at() with ", index.size(),
                 " indices on a ", dim(), "-d tensor");
  int64_t off = 0;
  size_t d = 0;
  for (int64_t i : index) {
    DELTAMOE_CHECK(i >= 0 && i < shape_[d], "tensor", "index ", i, " out of range in dim ", d);
    off += i * strides_[d++];
  }
  return load_as_float(raw(), dtype_, off);
}

void Tensor::fill(float value) {
  void* dst = raw();
  for_each_offset(shape_, strides_,
                  [&](int64_t, int64_t off) { store_from_float(dst, dtype_, off, value); });
}

}  // namespace deltamoe
