#include "deltamoe/core/arena.h"

#include <cstring>

namespace deltamoe {

Arena::Arena(size_t capacity) {
  reserve(capacity);
}

void Arena::reserve(size_t capacity) {
  if (storage_ && capacity <= capacity_) return;
  storage_.reset();  // the old block goes first (unless views still hold it): no 2x peak
  storage_ = std::make_shared<Storage>(capacity);
  capacity_ = capacity;
}

size_t Arena::allocate(size_t bytes, size_t align) {
  DELTAMOE_CHECK(align != 0 && (align & (align - 1)) == 0 && align <= kAlignment, "arena",
                 "alignment ", align, " is not a power of two up to ", kAlignment);
  const size_t start = (used_ + align - 1) & ~(align - 1);
  DELTAMOE_CHECK(start <= capacity_ && bytes <= capacity_ - start, "arena", "allocation of ", bytes,
                 " bytes at offset ", start, " exceeds capacity ", capacity_);
  used_ = start + bytes;
  if (used_ > high_water_) high_water_ = used_;
  return start;
}

void* Arena::at(size_t offset) const {
  DELTAMOE_CHECK(offset <= capacity_, "arena", "offset ", offset, " beyond capacity ", capacity_);
  return static_cast<char*>(storage_->data()) + offset;
}

Tensor Arena::view(size_t offset, Shape shape, DType dtype) const {
  const size_t bytes = static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype);
  DELTAMOE_CHECK(offset <= capacity_ && bytes <= capacity_ - offset, "arena", "view of ", bytes,
                 " bytes at offset ", offset, " exceeds capacity ", capacity_);
  return Tensor::wrap(at(offset), std::move(shape), dtype, storage_);
}

}  // namespace deltamoe
