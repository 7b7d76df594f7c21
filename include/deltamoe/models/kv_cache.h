// Paged KV cache: a pool of fixed-size blocks and per-sequence block tables.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "deltamoe/core/dtype.h"

namespace deltamoe::models {

/// Fixed-size blocks of KV rows shared by sequences (a paged KV cache, as vLLM's
/// PagedAttention): a block holds `block_tokens` positions of every layer's keys and values.
/// Sequences take blocks as they grow and give them back when done, so no memory is reserved
/// for the longest possible sequence. Block memory is allocated on first use and kept for
/// reuse. Thread-safe.
class KvBlockPool {
 public:
  /// `row`: values per position and layer (kv_heads · head_dim); max_blocks 0: unbounded;
  /// dtype: f32, or f16 (half the bytes; attention widens the values as it reads them).
  KvBlockPool(int64_t layers, int64_t row, int64_t block_tokens, int64_t max_blocks = 0,
              DType dtype = DType::f32);
  int64_t layers() const { return layers_; }
  int64_t row() const { return row_; }
  DType dtype() const { return dtype_; }
  int64_t block_tokens() const { return block_tokens_; }
  int64_t max_blocks() const { return max_blocks_; }
  /// Bytes of one block (all layers, K and V).
  size_t block_bytes() const;
  /// Blocks held by sequences now.
  int64_t used_blocks() const;
  /// Blocks that can still be taken (INT64_MAX when unbounded).
  int64_t free_blocks() const;
  /// Blocks that hold `tokens` positions.
  int64_t blocks_for(int64_t tokens) const { return (tokens + block_tokens_ - 1) / block_tokens_; }

  /// Takes a block: its id and memory ([layers][K, V][kv head][block_tokens][head_dim] of
  /// dtype(), so that each head's positions are contiguous for attention), or id −1 when
  /// max_blocks are in use.
  std::pair<int32_t, void*> acquire();
  /// Gives a block back.
  void release(int32_t id);

 private:
  int64_t layers_, row_, block_tokens_, max_blocks_;
  DType dtype_;
  mutable std::mutex mu_;
  std::vector<std::unique_ptr<float[]>> storage_;  // (f32 units, so 4-byte aligned either way)
  std::vector<int32_t> free_;
  int64_t used_ = 0;
};

/// Positions per block of the pool a KvCache makes for itself when given none.
inline constexpr int64_t kDefaultKvBlockTokens = 64;

/// A decode token stopped at an MoE layer because some of its experts' queues were not ready
/// yet (per-expert queues across steps: models::ExpertQueueRule): what it needs to go on from
/// there. Its keys and values of layers up to `layer` are already in the cache.
struct HeldToken {
  int32_t token = -1;
  int64_t layer = 0;             // the layer it waits at (that layer's attention is done)
  std::vector<float> h;          // [H] the residual stream before that layer's FFN
  std::vector<int32_t> experts;  // its routed experts there, in routing order
  std::vector<float> weights;    // their gate weights
  std::vector<uint8_t> done;     // which of them have run
  std::vector<float> out;        // [experts, H]: outputs of those that ran
  std::chrono::steady_clock::time_point since;  // when it started waiting
};

/// One sequence's keys and values: a block table into a KvBlockPool. length() tokens are
/// cached; positions are 0 .. length()−1. Move-only; blocks go back to the pool on clear()
/// and destruction. Not thread-safe (one sequence, one thread at a time).
class KvCache {
 public:
  /// A cache with its own unbounded pool (made on first use, with the model's shape).
  KvCache() = default;
  /// A cache taking blocks from a shared pool (a server's).
  explicit KvCache(std::shared_ptr<KvBlockPool> pool) : pool_(std::move(pool)) {}
  ~KvCache() { clear(); }
  KvCache(KvCache&& o) noexcept;
  KvCache& operator=(KvCache&& o) noexcept;
  KvCache(const KvCache&) = delete;
  KvCache& operator=(const KvCache&) = delete;

  int64_t length() const { return length_; }
  /// Forgets every cached token (and a held one) and gives the blocks back.
  void clear();
  /// The decode token stopped at an MoE layer between forward calls (null: none). While one
  /// is held, the next forward call must pass the same token; it resumes where it stopped.
  const HeldToken* held() const { return held_.get(); }
  /// Bytes held (blocks × block bytes).
  size_t bytes() const;
  /// Blocks held.
  int64_t blocks() const { return static_cast<int64_t>(ids_.size()); }
  /// Blocks still to take before `tokens` more positions fit (with no pool yet: counted in
  /// blocks of kDefaultKvBlockTokens).
  int64_t blocks_needed(int64_t tokens) const;
  const std::shared_ptr<KvBlockPool>& pool() const { return pool_; }

 private:
  friend class MoeLm;
  std::shared_ptr<KvBlockPool> pool_;
  std::vector<int32_t> ids_;
  std::vector<void*> base_;  // block memory, by block index
  int64_t length_ = 0;
  std::unique_ptr<HeldToken> held_;
};

}  // namespace deltamoe::models
