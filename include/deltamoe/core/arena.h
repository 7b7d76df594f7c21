// Arena: one aligned block of memory that hands out offsets.
//
// Planned execution (graph/, sched/ placement) computes offsets ahead of time and asks the
// arena for a block of the planned size; ad-hoc scratch users call allocate() which bumps an
// offset. Offsets, not pointers, are the currency so that a plan can be checked and
// serialised. Not thread-safe: give each thread its own arena or allocate before forking.
#pragma once

#include <cstddef>
#include <memory>

#include "deltamoe/core/tensor.h"

namespace deltamoe {

class Arena {
 public:
  /// Reserves `capacity` bytes (64-byte aligned, zero-filled).
  explicit Arena(size_t capacity = 0);

  /// Returns the offset of a new block of `bytes`, aligned to `align` (a power of two,
  /// at most kAlignment). Throws Error("arena") when the arena is full.
  size_t allocate(size_t bytes, size_t align = kAlignment);
  /// Pointer to the byte at `offset`; the caller must stay inside the block it was given.
  void* at(size_t offset) const;
  /// A contiguous tensor view of `shape` at `offset` (bounds-checked against capacity).
  Tensor view(size_t offset, Shape shape, DType dtype) const;
  /// Forgets every allocation (the memory stays reserved).
  void reset() { used_ = 0; }
  /// Grows the capacity to at least `capacity` bytes; invalidates pointers and views.
  void reserve(size_t capacity);

  size_t used() const { return used_; }
  size_t capacity() const { return capacity_; }
  /// Largest `used()` seen since construction (the arena's high-water mark).
  size_t high_water() const { return high_water_; }

 private:
  std::shared_ptr<Storage> storage_;
  size_t capacity_ = 0;
  size_t used_ = 0;
  size_t high_water_ = 0;
};

}  // namespace deltamoe
