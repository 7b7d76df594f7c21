// Paged KV cache (see models/kv_cache.h).
#include "deltamoe/models/kv_cache.h"

#include <algorithm>
#include <limits>

#include "deltamoe/core/error.h"

namespace deltamoe::models {

KvBlockPool::KvBlockPool(int64_t layers, int64_t row, int64_t block_tokens, int64_t max_blocks,
                         DType dtype)
    : layers_(layers),
      row_(row),
      block_tokens_(block_tokens),
      max_blocks_(max_blocks),
      dtype_(dtype) {
  DELTAMOE_CHECK(dtype == DType::f32 || dtype == DType::f16, "kv",
                 "the KV cache holds f32 or f16, not ", dtype_name(dtype));
  DELTAMOE_CHECK(layers > 0 && row > 0, "kv", "a KV pool needs layers and a row size, got ", layers,
                 " layers of ", row, " floats");
  DELTAMOE_CHECK(block_tokens > 0, "kv", "block size must be at least 1 position, got ",
                 block_tokens);
  DELTAMOE_CHECK(max_blocks >= 0, "kv", "max blocks must be ≥ 0 (0: unbounded), got ", max_blocks);
}

size_t KvBlockPool::block_bytes() const {
  return static_cast<size_t>(layers_ * 2 * block_tokens_ * row_) * dtype_size(dtype_);
}

int64_t KvBlockPool::used_blocks() const {
  std::lock_guard<std::mutex> lk(mu_);
  return used_;
}

int64_t KvBlockPool::free_blocks() const {
  std::lock_guard<std::mutex> lk(mu_);
  return max_blocks_ ? max_blocks_ - used_ : std::numeric_limits<int64_t>::max();
}

std::pair<int32_t, void*> KvBlockPool::acquire() {
  std::lock_guard<std::mutex> lk(mu_);
  if (max_blocks_ && used_ >= max_blocks_) return {-1, nullptr};
  ++used_;
  if (!free_.empty()) {
    const int32_t id = free_.back();
    free_.pop_back();
    return {id, storage_[static_cast<size_t>(id)].get()};
  }
  // Not zeroed: every position is written before attention reads it.
  storage_.emplace_back(new float[(block_bytes() + sizeof(float) - 1) / sizeof(float)]);
  return {static_cast<int32_t>(storage_.size() - 1), storage_.back().get()};
}

void KvBlockPool::release(int32_t id) {
  std::lock_guard<std::mutex> lk(mu_);
  DELTAMOE_ASSERT(id >= 0 && static_cast<size_t>(id) < storage_.size() && used_ > 0);
  free_.push_back(id);
  --used_;
}

KvCache::KvCache(KvCache&& o) noexcept
    : pool_(std::move(o.pool_)),
      ids_(std::move(o.ids_)),
      base_(std::move(o.base_)),
      length_(o.length_),
      held_(std::move(o.held_)) {
  o.ids_.clear();
  o.base_.clear();
  o.length_ = 0;
}

KvCache& KvCache::operator=(KvCache&& o) noexcept {
  if (this != &o) {
    clear();
    pool_ = std::move(o.pool_);
    ids_ = std::move(o.ids_);
    base_ = std::move(o.base_);
    length_ = o.length_;
    held_ = std::move(o.held_);
    o.ids_.clear();
    o.base_.clear();
    o.length_ = 0;
  }
  return *this;
}

void KvCache::clear() {
  for (int32_t id : ids_) pool_->release(id);
  ids_.clear();
  base_.clear();
  length_ = 0;
  held_.reset();
}

size_t KvCache::bytes() const {
  return pool_ ? ids_.size() * pool_->block_bytes() : 0;
}

int64_t KvCache::blocks_needed(int64_t tokens) const {
  if (!pool_) return (length_ + tokens + kDefaultKvBlockTokens - 1) / kDefaultKvBlockTokens;
  return std::max<int64_t>(0, pool_->blocks_for(length_ + tokens) - blocks());
}

}  // namespace deltamoe::models
