// Minimum maximum cumulative cost under series-parallel precedence (see docs/sched.md).
//
// A block is a run of items executed back to back; it is summarised by its rise a (largest
// prefix sum inside it, at least 0) and its total t. Two adjacent independent blocks X, Y
// cost max(a_X, t_X + a_Y) in the order XY, whatever comes before or after, so the best
// order of independent blocks is Johnson's rule (two-machine flow shop with a and a − t as
// the machine times): blocks with t < 0 first by increasing a, then the others by
// decreasing a − t. Over a decomposition tree (Sidney / Monma–Sidney style):
//   leaf:      one block;
//   parallel:  the union of both block lists (kept sorted by the rule);
//   series:    A's blocks then B's; while A's last block does not strictly precede B's first
//              in the rule, they are fused into one block (there is an optimal order where
//              they are adjacent), repeatedly, so the list stays strictly sorted across the
//              junction.
// The root's list in rule order is an optimal order. Block lists are multisets merged small
// into large: O(n log² n).
#include <algorithm>
#include <set>

#include "deltamoe/core/error.h"
#include "deltamoe/sched/sp.h"

namespace deltamoe::sched::sp {

namespace {

struct Block {
  int64_t a = 0;  // rise: max(0, largest prefix sum inside the block)
  int64_t t = 0;  // total
  int32_t head = -1, tail = -1;
};

// Johnson's rule as a strict weak order: true when x goes strictly before y.
struct Before {
  bool operator()(const Block& x, const Block& y) const {
    const bool gx = x.t < 0, gy = y.t < 0;
    if (gx != gy) return gx;
    if (gx) return x.a < y.a;
    return x.a - x.t > y.a - y.t;
  }
};

using BlockSet = std::multiset<Block, Before>;

}  // namespace

std::vector<int32_t> sp_sequence(const SpTree& tree, const std::vector<ItemCost>& cost,
                                 int64_t* max_prefix) {
  DELTAMOE_ASSERT(static_cast<int32_t>(cost.size()) == tree.n_items, "cost size mismatch");
  std::vector<int32_t> order;
  if (max_prefix) *max_prefix = 0;
  if (tree.root < 0) return order;
  std::vector<int32_t> next(tree.n_items, -1);
  auto concat = [&](const Block& x, const Block& y) {
    next[x.tail] = y.head;
    return Block{std::max(x.a, x.t + y.a), x.t + y.t, x.head, y.tail};
  };
  std::vector<BlockSet> pool;
  std::vector<int32_t> module(tree.nodes.size(), -1);  // tree node -> pool index
  auto merge_into = [&](int32_t a, int32_t b) {        // returns the surviving pool index
    if (pool[a].size() < pool[b].size()) std::swap(a, b);
    pool[a].merge(pool[b]);
    BlockSet().swap(pool[b]);
    return a;
  };

  // Iterative post-order.
  std::vector<std::pair<int32_t, bool>> st{{tree.root, false}};
  while (!st.empty()) {
    poll_deadline();
    auto [x, expanded] = st.back();
    st.pop_back();
    const auto& nd = tree.nodes[x];
    if (nd.kind == SpTree::Kind::kLeaf) {
      const ItemCost& c = cost[nd.item];
      const int64_t a = std::max<int64_t>({0, c.first, c.first + c.second});
      module[x] = static_cast<int32_t>(pool.size());
      pool.emplace_back();
      pool.back().insert(Block{a, c.first + c.second, nd.item, nd.item});
      continue;
    }
    if (!expanded) {
      st.push_back({x, true});
      st.push_back({nd.right, false});
      st.push_back({nd.left, false});
      continue;
    }
    const int32_t ma = module[nd.left], mb = module[nd.right];
    if (nd.kind == SpTree::Kind::kParallel) {
      module[x] = merge_into(ma, mb);
      continue;
    }
    BlockSet& sa = pool[ma];
    BlockSet& sb = pool[mb];
    if (!sa.empty() && !sb.empty() && !Before()(*std::prev(sa.end()), *sb.begin())) {
      Block c = concat(*std::prev(sa.end()), *sb.begin());
      sa.erase(std::prev(sa.end()));
      sb.erase(sb.begin());
      for (bool changed = true; changed;) {
        changed = false;
        if (!sa.empty() && !Before()(*std::prev(sa.end()), c)) {
          c = concat(*std::prev(sa.end()), c);
          sa.erase(std::prev(sa.end()));
          changed = true;
        }
        if (!sb.empty() && !Before()(c, *sb.begin())) {
          c = concat(c, *sb.begin());
          sb.erase(sb.begin());
          changed = true;
        }
      }
      sa.insert(c);
    }
    module[x] = merge_into(ma, mb);
  }

  int64_t level = 0, peak = 0;
  order.reserve(tree.n_items);
  for (const Block& b : pool[module[tree.root]]) {
    peak = std::max(peak, level + b.a);
    level += b.t;
    for (int32_t i = b.head;; i = next[i]) {
      order.push_back(i);
      if (i == b.tail) break;
    }
  }
  if (max_prefix) *max_prefix = peak;
  return order;
}

}  // namespace deltamoe::sched::sp
