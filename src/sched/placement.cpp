// Offsets for the buffers of an order: TF Lite's greedy-by-size. Buffers are placed largest
// first; each goes into the smallest gap (best fit) left between already-placed buffers whose
// lifetimes overlap its own, or on top of them when no gap fits. Overlapping placed buffers are
// found with a max-end segment tree over buffers sorted by start, so the cost is
// O(sum of overlaps · log n) rather than O(n²).
#include <algorithm>
#include <array>
#include <map>
#include <set>

#include "deltamoe/core/error.h"
#include "deltamoe/sched/schedule.h"

namespace deltamoe::sched {

namespace {

struct Item {
  int64_t start, end;  // inclusive step range, -1 = before the first step
  uint64_t bytes;
  int32_t node;        // producer (or the node whose workspace it is)
  bool workspace;
  uint64_t offset = kNotPlaced;
};

}  // namespace

namespace {

// Greedy by size (TF Lite): returns the arena size.
uint64_t place_greedy(std::vector<Item>& items) {
  const int32_t m = static_cast<int32_t>(items.size());
  // by_start: item indices sorted by start; tree over that array holds the max end.
  std::vector<int32_t> by_start(m);
  for (int32_t i = 0; i < m; ++i) by_start[i] = i;
  std::sort(by_start.begin(), by_start.end(), [&](int32_t a, int32_t b) {
    return items[a].start != items[b].start ? items[a].start < items[b].start : a < b;
  });
  std::vector<int64_t> starts(m);
  for (int32_t i = 0; i < m; ++i) starts[i] = items[by_start[i]].start;
  int32_t cap = 1;
  while (cap < m) cap *= 2;
  std::vector<int64_t> max_end(2 * cap, -2);
  for (int32_t i = 0; i < m; ++i) max_end[cap + i] = items[by_start[i]].end;
  for (int32_t i = cap - 1; i >= 1; --i) max_end[i] = std::max(max_end[2 * i], max_end[2 * i + 1]);

  std::vector<int32_t> by_size(m);
  for (int32_t i = 0; i < m; ++i) by_size[i] = i;
  std::sort(by_size.begin(), by_size.end(), [&](int32_t a, int32_t b) {
    if (items[a].bytes != items[b].bytes) return items[a].bytes > items[b].bytes;
    if (items[a].start != items[b].start) return items[a].start < items[b].start;
    return a < b;
  });
  std::vector<std::pair<uint64_t, uint64_t>> busy;  // (offset, end offset) of placed overlaps
  std::vector<std::array<int32_t, 3>> stack;
  uint64_t arena = 0;
  for (int32_t it : by_size) {
    Item& cur = items[it];
    busy.clear();
    // Items starting inside [start, end] overlap.
    const int32_t lo = static_cast<int32_t>(std::lower_bound(starts.begin(), starts.end(), cur.start) - starts.begin());
    const int32_t hi = static_cast<int32_t>(std::upper_bound(starts.begin(), starts.end(), cur.end) - starts.begin());
    for (int32_t k = lo; k < hi; ++k) {
      const Item& o = items[by_start[k]];
      if (o.offset != kNotPlaced) busy.push_back({o.offset, o.offset + o.bytes});
    }
    // Items starting before `start` overlap when they end at or after it.
    if (lo > 0) {
      stack.clear();
      stack.push_back({1, 0, cap});
      while (!stack.empty()) {
        const auto [node, l, r] = stack.back();
        stack.pop_back();
        if (l >= lo || max_end[node] < cur.start) continue;
        if (node >= cap) {
          const Item& o = items[by_start[node - cap]];
          if (o.offset != kNotPlaced) busy.push_back({o.offset, o.offset + o.bytes});
          continue;
        }
        const int32_t mid = (l + r) / 2;
        stack.push_back({2 * node, l, mid});
        stack.push_back({2 * node + 1, mid, r});
      }
    }
    std::sort(busy.begin(), busy.end());
    uint64_t prev_end = 0, best = kNotPlaced, best_gap = kNotPlaced;
    for (const auto& [off, off_end] : busy) {
      if (off > prev_end) {
        const uint64_t gap = off - prev_end;
        if (gap >= cur.bytes && gap < best_gap) {
          best = prev_end;
          best_gap = gap;
        }
      }
      prev_end = std::max(prev_end, off_end);
    }
    if (best == kNotPlaced) best = prev_end;
    cur.offset = best;
    arena = std::max(arena, best + cur.bytes);
  }
  return arena;
}

// Above this many overlapping lifetime pairs greedy-by-size would take more than ~0.5 s.
constexpr uint64_t kMaxGreedyPairs = 5000000;

// Overlapping pairs, counted by a sweep: each item meets the items still live at its start.
uint64_t overlapping_pairs(const std::vector<Item>& items) {
  std::vector<std::pair<int64_t, int>> ev;  // (time, +1 start / -1 after end); starts first
  ev.reserve(items.size() * 2);
  for (const Item& i : items) {
    ev.push_back({2 * i.start, 1});
    ev.push_back({2 * i.end + 1, -1});
  }
  std::sort(ev.begin(), ev.end());
  uint64_t live = 0, pairs = 0;
  for (const auto& [t, d] : ev) {
    if (d > 0) pairs += live++;
    else --live;
  }
  return pairs;
}

// Online allocator over the order: best-fit free block (smallest that fits, lowest offset),
// coalescing on free, growing the top when nothing fits.
uint64_t place_online(std::vector<Item>& items) {
  std::vector<int32_t> by_start(items.size()), by_end(items.size());
  for (size_t i = 0; i < items.size(); ++i) by_start[i] = by_end[i] = static_cast<int32_t>(i);
  std::sort(by_start.begin(), by_start.end(), [&](int32_t a, int32_t b) {
    return items[a].start != items[b].start ? items[a].start < items[b].start : a < b;
  });
  std::sort(by_end.begin(), by_end.end(), [&](int32_t a, int32_t b) {
    return items[a].end != items[b].end ? items[a].end < items[b].end : a < b;
  });
  std::map<uint64_t, uint64_t> free_at;                 // offset -> size
  std::set<std::pair<uint64_t, uint64_t>> free_by_size;  // (size, offset)
  uint64_t top = 0, arena = 0;
  auto release = [&](uint64_t off, uint64_t size) {
    auto next = free_at.lower_bound(off);
    if (next != free_at.end() && next->first == off + size) {
      size += next->second;
      free_by_size.erase({next->second, next->first});
      next = free_at.erase(next);
    }
    if (next != free_at.begin()) {
      auto prev = std::prev(next);
      if (prev->first + prev->second == off) {
        off = prev->first;
        size += prev->second;
        free_by_size.erase({prev->second, prev->first});
        free_at.erase(prev);
      }
    }
    if (off + size == top) {  // merge into the unused top
      top = off;
      return;
    }
    free_at[off] = size;
    free_by_size.insert({size, off});
  };
  size_t si = 0, ei = 0;
  while (si < by_start.size() || ei < by_end.size()) {
    // At equal times allocations come first: buffers born at t and freed at t coexist.
    if (si < by_start.size() && (ei >= by_end.size() || items[by_start[si]].start <= items[by_end[ei]].end)) {
      Item& it = items[by_start[si++]];
      auto f = free_by_size.lower_bound({it.bytes, 0});
      if (f != free_by_size.end()) {
        const auto [size, off] = *f;
        free_by_size.erase(f);
        free_at.erase(off);
        it.offset = off;
        if (size > it.bytes) {
          free_at[off + it.bytes] = size - it.bytes;
          free_by_size.insert({size - it.bytes, off + it.bytes});
        }
      } else {
        // Reuse a free block that ends at the top, if any, and grow from there.
        auto last = free_at.empty() ? free_at.end() : std::prev(free_at.end());
        if (last != free_at.end() && last->first + last->second == top) {
          it.offset = last->first;
          free_by_size.erase({last->second, last->first});
          free_at.erase(last);
        } else {
          it.offset = top;
        }
        top = it.offset + it.bytes;
      }
      arena = std::max(arena, it.offset + it.bytes);
    } else {
      const Item& it = items[by_end[ei++]];
      release(it.offset, it.bytes);
    }
  }
  return arena;
}

}  // namespace

Placement place_buffers(const Graph& g, const Order& order, PlacementMethod method) {
  const SimResult sim = simulate(g, order);  // also validates the order
  const int32_t n = g.size();
  std::vector<int32_t> pos(n);
  for (int32_t t = 0; t < n; ++t) pos[order[t]] = t;
  Placement pl;
  pl.offsets.assign(n, 0);
  pl.workspace_offsets.assign(n, kNotPlaced);
  pl.peak_bytes = sim.peak;
  std::vector<Item> items;
  for (int32_t b = 0; b < n; ++b) {
    if (g.nodes[b].view_of != -1) continue;
    if (g.buffer_persistent[b]) {
      pl.offsets[b] = kNotPlaced;
      continue;
    }
    const uint64_t bytes = g.buffer_bytes(b);
    if (bytes == 0) continue;
    const int64_t start = g.is_free_input(b) ? -1 : pos[b];
    int64_t end = pos[b];
    if (g.buffer_output[b]) {
      end = n;
    } else {
      for (int32_t r : g.buffer_readers[b]) end = std::max<int64_t>(end, pos[r]);
    }
    items.push_back({start, end, bytes, b, false});
  }
  for (int32_t v = 0; v < n; ++v)
    if (g.nodes[v].workspace) items.push_back({pos[v], pos[v], g.nodes[v].workspace, v, true});
  if (method == PlacementMethod::kAuto)
    method = overlapping_pairs(items) > kMaxGreedyPairs ? PlacementMethod::kOnlineBestFit : PlacementMethod::kGreedyBySize;
  uint64_t arena = 0;
  if (method == PlacementMethod::kOnlineBestFit) {
    pl.method = "online-best-fit";
    arena = place_online(items);
  } else {
    pl.method = "greedy-by-size";
    arena = place_greedy(items);
  }

  for (const Item& i : items) {
    if (i.workspace)
      pl.workspace_offsets[i.node] = i.offset;
    else
      pl.offsets[i.node] = i.offset;
  }
  for (int32_t v = 0; v < n; ++v)
    if (g.nodes[v].view_of != -1) pl.offsets[v] = pl.offsets[g.base[v]];
  pl.arena_bytes = arena;
  pl.fragmentation = sim.peak ? static_cast<double>(arena) / static_cast<double>(sim.peak) - 1.0 : 0.0;
  return pl;
}

}  // namespace deltamoe::sched
