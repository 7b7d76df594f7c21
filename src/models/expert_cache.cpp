// The expert cache (see models/expert_cache.h): slots, eviction policies, reader threads.
#include "deltamoe/models/expert_cache.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <random>
#include <thread>

#include "deltamoe/core/error.h"
#include "deltamoe/core/units.h"
#include "deltamoe/kernels/cpu.h"

namespace deltamoe::models {

namespace {

constexpr const char* kComp = "offload";
// Direct I/O wants buffers, offsets and lengths aligned to the logical block size; 4 KiB
// covers every block device we meet.
constexpr uint64_t kAlign = 4096;
// Reads are split into chunks of at most this size, so that a large expert's read keeps
// several reader threads (and the device's queue) busy. Large chunks measured best on a
// virtio disk (docs/experiments/offload.md: 1, 4, 8, 16 and 32 MiB compared): each request
// has a fixed cost, and a layer's reads are only a few experts anyway.
constexpr uint64_t kChunk = uint64_t{32} << 20;
// Decay of lfu / router scores each time the expert's layer runs (about 3 calls half-life).
constexpr float kDecay = 0.8f;

uint64_t round_up(uint64_t v, uint64_t a) {
  return (v + a - 1) / a * a;
}

// The reads of one matrix: fn(offset, len, need, into) for each chunk, `into` its byte offset
// in the matrix's slot region. Direct reads cover the block-aligned range around the matrix
// (its data then starts at offset % kAlign in the region); `need` is what must arrive (the
// aligned end may run past the end of the file).
template <class Fn>
void for_each_chunk(const io::FileExtent& x, bool direct, Fn fn) {
  const uint64_t begin = direct ? x.offset / kAlign * kAlign : x.offset;
  const uint64_t end = direct ? round_up(x.offset + x.bytes, kAlign) : x.offset + x.bytes;
  for (uint64_t o = begin; o < end; o += kChunk) {
    const uint64_t len = std::min(kChunk, end - o);
    fn(o, len, std::min(o + len, x.offset + x.bytes) - o, o - begin);
  }
}

// Reads up to `len` bytes at `offset` (retrying short reads and EINTR, stopping at the end of
// the file); the bytes read, and the error text in `err` on failure.
uint64_t read_fully(int fd, uint8_t* dst, uint64_t len, uint64_t offset, std::string& err) {
  uint64_t done = 0;
  while (done < len) {
    const ssize_t r = ::pread(fd, dst + done, len - done, static_cast<off_t>(offset + done));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      err = std::strerror(errno);
      break;
    }
    if (r == 0) break;
    done += static_cast<uint64_t>(r);
  }
  return done;
}

}  // namespace

const char* expert_cache_policy_name(ExpertCachePolicy p) {
  switch (p) {
    case ExpertCachePolicy::lru:
      return "lru";
    case ExpertCachePolicy::lfu:
      return "lfu";
    case ExpertCachePolicy::router:
      return "router";
  }
  return "?";
}

ExpertCachePolicy parse_expert_cache_policy(const std::string& name) {
  for (auto p : {ExpertCachePolicy::lru, ExpertCachePolicy::lfu, ExpertCachePolicy::router})
    if (name == expert_cache_policy_name(p)) return p;
  fail(kComp, "--expert-policy '", name, "' is not one of lru, lfu, router");
}

ExpertCacheOptions parse_expert_cache_budget(const std::string& text) {
  const ByteBudget b = parse_byte_budget(text, kComp, "--expert-cache");
  ExpertCacheOptions o;
  o.budget_bytes = b.bytes;
  o.fraction = b.fraction;
  return o;
}

struct ExpertCache::Impl {
  enum class State : uint8_t { absent, loading, loaded, failed };
  struct Entry {
    State state = State::absent;
    int64_t slot = -1;
    int32_t pins = 0;
    int32_t pending = 0;  // chunks not yet read
    bool prefetched_unused = false;
    uint64_t last_use = 0;
    float score = 0.0f;  // router: decayed probability mass
    float freq = 0.0f;   // share of its layer's recent runs that used it (EMA, kDecay)
    std::string error;
    std::array<kernels::PackedLinear, 3> mats;
  };
  struct Chunk {
    int64_t key;
    int fd;
    uint64_t offset, len, need;  // need: bytes that must arrive (len may run past EOF)
    uint8_t* dst;
  };

  int64_t layers, experts;
  DType dtype;
  std::array<Shape, 3> shapes;
  std::vector<std::array<io::FileExtent, 3>> extents;
  std::vector<std::array<int, 3>> fds;  // per key and matrix
  std::map<std::string, int> open_files;
  bool direct = true;
  std::array<uint64_t, 3> region_off{};  // of each matrix in a slot

  uint8_t* slab = nullptr;
  size_t slab_bytes = 0;
  uint64_t slot_bytes = 0;
  std::vector<int64_t> slot_owner;  // key or -1
  std::vector<Entry> entries;
  ExpertCachePolicy policy;
  uint64_t tick = 0;
  int64_t loading = 0;
  int64_t cur_layer = 0;       // layer of the latest begin()
  float precision_ema = 0.5f;  // recent share of predicted experts that were used

  mutable std::mutex mu;
  std::condition_variable cv_io, cv_done;
  std::deque<Chunk> demand_q, prefetch_q;
  bool stop = false;
  std::vector<std::thread> threads;
  ExpertCacheStats stats;
  std::deque<int64_t> recent;  // keys of the latest completed reads (probe_read_gbps)

  uint8_t* slot_base(int64_t s) const { return slab + static_cast<uint64_t>(s) * slot_bytes; }

  // Slot to (re)use, or -1. Prefetches never evict pinned, loading or prefetched-unused
  // experts; demand reads take prefetched-unused ones only when nothing else is left.
  int64_t victim(bool for_prefetch) const {
    int64_t best = -1;
    std::tuple<int, float, uint64_t> best_rank{};
    for (int64_t s = 0; s < static_cast<int64_t>(slot_owner.size()); ++s) {
      const int64_t k = slot_owner[static_cast<size_t>(s)];
      if (k < 0) return s;
      const Entry& en = entries[static_cast<size_t>(k)];
      if (en.pins > 0 || en.state == State::loading) continue;
      if (for_prefetch && en.prefetched_unused) continue;
      float score = policy == ExpertCachePolicy::lru   ? 0.0f
                    : policy == ExpertCachePolicy::lfu ? en.freq
                                                       : en.score;
      if (policy == ExpertCachePolicy::router) {
        // Expected use per layer until its next chance: layers run in a cycle, so an expert
        // of the layer that just ran waits longest for its next use (Belady's choice when
        // every expert is equally likely, as under uniform routing).
        const int64_t d = ((k / experts) - cur_layer - 1 + 2 * layers) % layers;
        score /= static_cast<float>(d + 1);
      }
      const std::tuple<int, float, uint64_t> rank{en.prefetched_unused ? 1 : 0, score, en.last_use};
      if (best < 0 || rank < best_rank) {
        best = s;
        best_rank = rank;
      }
    }
    return best;
  }

  // Starts reading `key` into a free or evicted slot; false when no slot can be had now. A
  // prefetch evicts only an expert less likely to be used than predictions have been
  // right: where routing has locality, a guess must not push out what would have hit.
  bool start_read(int64_t key, bool demand) {
    const int64_t s = victim(!demand);
    if (s < 0) return false;
    const int64_t old = slot_owner[static_cast<size_t>(s)];
    if (!demand && old >= 0 && entries[static_cast<size_t>(old)].freq >= precision_ema)
      return false;
    if (old >= 0) {
      Entry& o = entries[static_cast<size_t>(old)];
      o.state = State::absent;
      o.slot = -1;
      o.prefetched_unused = false;
      for (auto& m : o.mats) m = kernels::PackedLinear();
      ++stats.evictions;
    }
    Entry& en = entries[static_cast<size_t>(key)];
    slot_owner[static_cast<size_t>(s)] = key;
    en.slot = s;
    en.state = State::loading;
    en.error.clear();
    ++loading;
    std::deque<Chunk>& q = demand ? demand_q : prefetch_q;
    en.pending = 0;
    for (size_t m = 0; m < 3; ++m) {
      uint8_t* region = slot_base(s) + region_off[m];
      const int fd = fds[static_cast<size_t>(key)][m];
      for_each_chunk(extents[static_cast<size_t>(key)][m], direct,
                     [&](uint64_t off, uint64_t len, uint64_t need, uint64_t into) {
                       q.push_back({key, fd, off, len, need, region + into});
                       ++en.pending;
                     });
    }
    cv_io.notify_all();
    return true;
  }

  // Moves a loading entry's queued prefetch chunks to the demand queue.
  void promote(int64_t key) {
    for (auto it = prefetch_q.begin(); it != prefetch_q.end();) {
      if (it->key == key) {
        demand_q.push_back(*it);
        it = prefetch_q.erase(it);
      } else {
        ++it;
      }
    }
  }

  // Drops a loading prefetch whose chunks all still wait in the queue; false if a reader
  // has one already (the read then completes as usual).
  bool cancel(int64_t key) {
    Entry& en = entries[static_cast<size_t>(key)];
    const auto queued = std::count_if(prefetch_q.begin(), prefetch_q.end(),
                                      [&](const Chunk& c) { return c.key == key; });
    if (queued != en.pending) return false;
    prefetch_q.erase(std::remove_if(prefetch_q.begin(), prefetch_q.end(),
                                    [&](const Chunk& c) { return c.key == key; }),
                     prefetch_q.end());
    slot_owner[static_cast<size_t>(en.slot)] = -1;
    en.slot = -1;
    en.pending = 0;
    en.state = State::absent;
    --loading;
    return true;
  }

  void finish(Entry& en) {
    --loading;
    if (!en.error.empty()) {
      en.state = State::failed;
      return;
    }
    const int64_t key = &en - entries.data();
    for (int m = 0; m < 3; ++m) {
      const io::FileExtent& x = extents[static_cast<size_t>(key)][static_cast<size_t>(m)];
      const uint64_t pad = direct ? x.offset % kAlign : 0;
      uint8_t* data = slot_base(en.slot) + region_off[static_cast<size_t>(m)] + pad;
      en.mats[static_cast<size_t>(m)] = kernels::PackedLinear::row_major(
          Tensor::wrap(data, shapes[static_cast<size_t>(m)], dtype), dtype);
      DELTAMOE_ASSERT(en.mats[static_cast<size_t>(m)].in_place(),
                      "expert matrix in a slot must be used in place");
    }
    en.state = State::loaded;
    ++stats.reads;
    recent.push_back(key);
    if (recent.size() > 4096) recent.pop_front();
  }

  void reader() {
    std::unique_lock<std::mutex> lock(mu);
    for (;;) {
      cv_io.wait(lock, [&] { return stop || !demand_q.empty() || !prefetch_q.empty(); });
      if (stop) return;
      const bool is_demand = !demand_q.empty();
      std::deque<Chunk>& q = is_demand ? demand_q : prefetch_q;
      const Chunk c = q.front();
      q.pop_front();
      lock.unlock();
      const auto t0 = std::chrono::steady_clock::now();
      std::string err;
      const uint64_t done = read_fully(c.fd, c.dst, c.len, c.offset, err);
      if (err.empty() && done < c.need)
        err = "short read (" + std::to_string(done) + " of " + std::to_string(c.need) +
              " bytes): the file changed or was truncated";
      if (!direct)
        ::posix_fadvise(c.fd, static_cast<off_t>(c.offset), static_cast<off_t>(c.len),
                        POSIX_FADV_DONTNEED);
      const double dt =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      lock.lock();
      stats.read_s += dt;
      stats.bytes_read += done;
      if (is_demand) stats.demand_bytes += done;
      Entry& en = entries[static_cast<size_t>(c.key)];
      if (!err.empty() && en.error.empty()) {
        en.error = "reading " + std::to_string(c.len) + " bytes at offset " +
                   std::to_string(c.offset) + ": " + err;
      }
      if (--en.pending == 0) {
        finish(en);
        cv_done.notify_all();
      }
    }
  }
};

ExpertCache::ExpertCache(int64_t layers, int64_t experts, DType dtype,
                         const std::array<Shape, 3>& shapes,
                         std::vector<std::array<io::FileExtent, 3>> extents,
                         const ExpertCacheOptions& opts)
    : impl_(std::make_unique<Impl>()),
      opts_(opts),
      substitute_(opts.substitute),
      layers_(layers),
      experts_(experts) {
  Impl& m = *impl_;
  DELTAMOE_CHECK(
      layers > 0 && experts > 0 && static_cast<int64_t>(extents.size()) == layers * experts, kComp,
      "expert cache needs ", layers * experts, " experts' extents, got ", extents.size());
  DELTAMOE_CHECK(opts.io_threads >= 1 && opts.io_threads <= 64, kComp,
                 "reader threads must be in [1, 64], got ", opts.io_threads);
  m.layers = layers;
  m.experts = experts;
  m.dtype = dtype;
  m.shapes = shapes;
  m.policy = opts.policy;
  m.direct = opts.direct_io;
  for (int i = 0; i < 3; ++i) {
    const uint64_t bytes =
        static_cast<uint64_t>(shape_numel(shapes[static_cast<size_t>(i)])) * dtype_size(dtype);
    expert_bytes_ += bytes;
    m.region_off[static_cast<size_t>(i)] = slot_bytes_;
    slot_bytes_ += round_up(bytes, kAlign) + kAlign;  // + kAlign: room for the aligned range
  }
  for (const auto& x : extents)
    for (int i = 0; i < 3; ++i)
      DELTAMOE_CHECK(x[static_cast<size_t>(i)].bytes ==
                         static_cast<uint64_t>(shape_numel(shapes[static_cast<size_t>(i)])) *
                             dtype_size(dtype),
                     kComp, x[static_cast<size_t>(i)].path, ": expert matrix of ",
                     x[static_cast<size_t>(i)].bytes, " bytes, expected ",
                     shape_numel(shapes[static_cast<size_t>(i)]) * dtype_size(dtype));
  const int64_t total = layers * experts;
  int64_t slots = opts.budget_bytes > 0
                      ? static_cast<int64_t>(opts.budget_bytes / slot_bytes_)
                      : static_cast<int64_t>(std::floor(opts.fraction * double(total) + 1e-9));
  DELTAMOE_CHECK(slots >= experts, kComp, "--expert-cache ",
                 opts.budget_bytes > 0 ? format_bytes(opts.budget_bytes)
                                       : std::to_string(opts.fraction * 100.0) + "%",
                 " holds ", slots, " experts of ", format_bytes(slot_bytes_),
                 "; one MoE layer may need all its ", experts, " at once (at least ",
                 format_bytes(slot_bytes_ * static_cast<uint64_t>(experts)), ")");
  slots_ = std::min(slots, total);

  // Open each file once; O_DIRECT where the filesystem takes it (tmpfs does not).
  for (const auto& x : extents)
    for (const auto& f : x) {
      if (m.open_files.count(f.path)) continue;
      int fd = -1;
      if (m.direct) {
        fd = ::open(f.path.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC);
        if (fd < 0 && errno == EINVAL) m.direct = false;
      }
      if (fd < 0) fd = ::open(f.path.c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) {
        const std::string why = std::strerror(errno);
        for (auto& [p, d] : m.open_files) ::close(d);
        fail(kComp, f.path, ": cannot open: ", why);
      }
      m.open_files[f.path] = fd;
    }
  if (!m.direct)  // a filesystem refused O_DIRECT: read every file the same way
    for (auto& [p, d] : m.open_files) {
      const int fl = ::fcntl(d, F_GETFL);
      if (fl >= 0 && (fl & O_DIRECT)) ::fcntl(d, F_SETFL, fl & ~O_DIRECT);
    }
  m.extents = std::move(extents);
  m.fds.resize(m.extents.size());
  for (size_t k = 0; k < m.extents.size(); ++k)
    for (size_t i = 0; i < 3; ++i) m.fds[k][i] = m.open_files.at(m.extents[k][i].path);

  m.slot_bytes = slot_bytes_;
  m.slab_bytes = static_cast<size_t>(slot_bytes_ * static_cast<uint64_t>(slots_));
  void* p =
      ::mmap(nullptr, m.slab_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    for (auto& [path, d] : m.open_files) ::close(d);
    fail(kComp, "cannot allocate ", format_bytes(m.slab_bytes), " for ", slots_,
         " expert slots: ", std::strerror(errno));
  }
  m.slab = static_cast<uint8_t*>(p);
  m.slot_owner.assign(static_cast<size_t>(slots_), -1);
  m.entries.resize(static_cast<size_t>(total));
  for (int i = 0; i < opts.io_threads; ++i) m.threads.emplace_back([&m] { m.reader(); });
}

ExpertCache::~ExpertCache() {
  Impl& m = *impl_;
  {
    std::lock_guard<std::mutex> lock(m.mu);
    m.stop = true;
  }
  m.cv_io.notify_all();
  for (auto& t : m.threads) t.join();
  ::munmap(m.slab, m.slab_bytes);
  for (auto& [p, d] : m.open_files) ::close(d);
}

bool ExpertCache::direct_io() const {
  return impl_->direct;
}

void ExpertCache::begin(int64_t l, const std::vector<int32_t>& experts, const float* probs,
                        int64_t rows) {
  Impl& m = *impl_;
  DELTAMOE_ASSERT(l >= 0 && l < layers_, "layer ", l, " of ", layers_);
  std::lock_guard<std::mutex> lock(m.mu);
  ++m.tick;
  m.cur_layer = l;
  Impl::Entry* layer = m.entries.data() + l * experts_;
  for (int64_t e = 0; e < experts_; ++e) layer[e].freq *= kDecay;
  for (int32_t e : experts) layer[e].freq += 1.0f - kDecay;
  if (m.policy == ExpertCachePolicy::router) {
    for (int64_t e = 0; e < experts_; ++e) layer[e].score *= kDecay;
    if (probs && rows > 0) {
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t e = 0; e < experts_; ++e)
          layer[e].score += probs[r * experts_ + e] / static_cast<float>(rows);
    }
  }
  // A prediction for this layer that the routing did not use was wrong: it stops being
  // protected (else wrong guesses would pile up in protected slots and shrink the cache).
  // One whose read has not started yet is cancelled: its bytes would be read for nothing.
  for (int64_t e = 0; e < experts_; ++e) {
    Impl::Entry& en = layer[e];
    if (!en.prefetched_unused ||
        std::find(experts.begin(), experts.end(), static_cast<int32_t>(e)) != experts.end())
      continue;
    en.prefetched_unused = false;
    if (en.state == Impl::State::loading && m.cancel(l * experts_ + e))
      ++m.stats.prefetch_cancelled;
  }
  for (int32_t e : experts) {
    DELTAMOE_ASSERT(e >= 0 && e < experts_, "expert ", e, " of ", experts_);
    Impl::Entry& en = layer[e];
    ++en.pins;
    en.last_use = m.tick;
    ++m.stats.requests;
    if (en.prefetched_unused) {
      ++m.stats.prefetch_used;
      en.prefetched_unused = false;
    }
    if (en.state == Impl::State::loaded) {
      ++m.stats.hits;
    } else if (en.state == Impl::State::loading) {
      ++m.stats.late_prefetch;
      m.promote(l * experts_ + e);
    } else {
      ++m.stats.misses;
      m.start_read(l * experts_ + e, /*demand=*/true);  // else wait() retries
    }
  }
}

bool ExpertCache::ready(int64_t l, int32_t e) const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->entries[static_cast<size_t>(l * experts_ + e)].state == Impl::State::loaded;
}

moe::ExpertMatrices ExpertCache::wait(int64_t l, int32_t e) {
  Impl& m = *impl_;
  const int64_t key = l * experts_ + e;
  std::unique_lock<std::mutex> lock(m.mu);
  Impl::Entry& en = m.entries[static_cast<size_t>(key)];
  DELTAMOE_ASSERT(en.pins > 0, "wait() on an expert begin() did not pin");
  std::chrono::steady_clock::time_point t0{};
  bool waited = false;
  while (en.state != Impl::State::loaded) {
    if (en.state == Impl::State::failed) {
      const std::string why = en.error;
      en.state = Impl::State::absent;
      m.slot_owner[static_cast<size_t>(en.slot)] = -1;
      en.slot = -1;
      fail(kComp, m.extents[static_cast<size_t>(key)][0].path, ": layer ", l, " expert ", e, ": ",
           why);
    }
    if (en.state == Impl::State::absent && !m.start_read(key, true))
      DELTAMOE_CHECK(m.loading > 0, kComp, "all ", slots_,
                     " expert slots hold experts in use: the budget is too small for this "
                     "batch (more experts pinned at once than slots)");
    if (!waited) {
      t0 = std::chrono::steady_clock::now();
      waited = true;
    }
    m.cv_done.wait(lock);
  }
  if (waited)
    m.stats.stall_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return {&en.mats[0], &en.mats[1], &en.mats[2]};
}

void ExpertCache::end(int64_t l, const std::vector<int32_t>& experts) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  for (int32_t e : experts) {
    Impl::Entry& en = impl_->entries[static_cast<size_t>(l * experts_ + e)];
    DELTAMOE_ASSERT(en.pins > 0, "end() of an expert not pinned");
    --en.pins;
  }
}

void ExpertCache::prefetch(int64_t l, const std::vector<int32_t>& experts) {
  Impl& m = *impl_;
  std::lock_guard<std::mutex> lock(m.mu);
  for (int32_t e : experts) {
    Impl::Entry& en = m.entries[static_cast<size_t>(l * experts_ + e)];
    if (en.state == Impl::State::loaded || en.state == Impl::State::loading) continue;
    if (!m.start_read(l * experts_ + e, /*demand=*/false)) break;
    en.prefetched_unused = true;
    ++m.stats.prefetch_reads;
  }
}

void ExpertCache::record_prediction(int64_t predicted, int64_t predicted_used, int64_t actual) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->stats.predicted += predicted;
  impl_->stats.predicted_used += predicted_used;
  impl_->stats.actual += actual;
  if (predicted > 0)
    impl_->precision_ema = 0.9f * impl_->precision_ema + 0.1f * static_cast<float>(predicted_used) /
                                                             static_cast<float>(predicted);
}

void ExpertCache::record_substitutions(int64_t n) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->stats.substitutions += n;
}

double ExpertCache::probe_read_gbps(int64_t n, uint64_t seed) const {
  const Impl& m = *impl_;
  struct Job {
    int fd;
    uint64_t offset, len;
  };
  std::vector<Job> jobs;
  // The experts read most recently, newest first, distinct; random ones to fill up.
  std::vector<int64_t> keys;
  {
    std::lock_guard<std::mutex> lock(m.mu);
    std::vector<uint8_t> seen(m.extents.size(), 0);
    for (auto it = m.recent.rbegin(); it != m.recent.rend() && int64_t(keys.size()) < n; ++it)
      if (!seen[static_cast<size_t>(*it)]++) keys.push_back(*it);
    std::vector<int64_t> rest;
    for (size_t k = 0; k < m.extents.size(); ++k)
      if (!seen[k]) rest.push_back(static_cast<int64_t>(k));
    std::mt19937_64 rng(seed);
    std::shuffle(rest.begin(), rest.end(), rng);
    for (size_t i = 0; i < rest.size() && int64_t(keys.size()) < n; ++i) keys.push_back(rest[i]);
  }
  for (int64_t k : keys)
    for (size_t i = 0; i < 3; ++i)
      for_each_chunk(m.extents[static_cast<size_t>(k)][i], m.direct,
                     [&](uint64_t off, uint64_t len, uint64_t, uint64_t) {
                       jobs.push_back({m.fds[static_cast<size_t>(k)][i], off, len});
                     });
  std::atomic<size_t> next{0};
  std::atomic<uint64_t> bytes{0};
  // The buffers are allocated and touched before the clock starts: under a memory limit,
  // faulting fresh pages in (reclaiming others) would be timed as reading.
  std::vector<std::unique_ptr<void, decltype(&std::free)>> bufs;
  for (int t = 0; t < opts_.io_threads; ++t) {
    void* b = nullptr;
    if (::posix_memalign(&b, kAlign, kChunk) != 0) fail(kComp, "cannot allocate probe buffers");
    std::memset(b, 0, kChunk);
    bufs.emplace_back(b, &std::free);
  }
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::thread> pool;
  for (int t = 0; t < opts_.io_threads; ++t)
    pool.emplace_back([&, buf = bufs[static_cast<size_t>(t)].get()] {
      for (size_t j; (j = next.fetch_add(1)) < jobs.size();) {
        std::string err;
        bytes +=
            read_fully(jobs[j].fd, static_cast<uint8_t*>(buf), jobs[j].len, jobs[j].offset, err);
        if (!m.direct)
          ::posix_fadvise(jobs[j].fd, static_cast<off_t>(jobs[j].offset),
                          static_cast<off_t>(jobs[j].len), POSIX_FADV_DONTNEED);
      }
    });
  for (auto& t : pool) t.join();
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return s > 0 ? static_cast<double>(bytes.load()) / s / 1e9 : 0.0;
}

ExpertCacheStats ExpertCache::stats() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->stats;
}

void ExpertCache::reset_stats() {
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->stats = {};
}

}  // namespace deltamoe::models
