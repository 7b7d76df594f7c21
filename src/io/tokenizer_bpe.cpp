// BPE by merge rank (the algorithm of HF tokenizers' BPE model, written for deltamoe):
// split a piece into characters (unknown ones become byte tokens or <unk>), then repeatedly
// merge the adjacent pair with the lowest rank, leftmost first, until no pair has a rank.
#include <queue>

#include "io/tokenizer_hf.h"

namespace deltamoe::io::hf {

namespace {
uint64_t pair_key(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

struct Symbol {
  int32_t id;
  int32_t prev, next;  // neighbour indices, -1 at the ends
  bool alive;
};

struct Candidate {
  int32_t rank, pos, new_id;
  // Lowest rank first, then leftmost.
  bool operator<(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
};
}  // namespace

void Bpe::merge_word(std::string_view word, std::vector<int32_t>& out) const {
  std::vector<Symbol> sym;
  sym.reserve(word.size());
  const auto push = [&](int32_t id) {
    const auto n = static_cast<int32_t>(sym.size());
    sym.push_back({id, n - 1, -1, true});
    if (n > 0) sym[static_cast<size_t>(n - 1)].next = n;
  };
  // Unknown characters: a pending <unk> that grows while fuse_unk holds. As in the reference,
  // a character that falls back to bytes does not flush the pending <unk> first.
  bool pending_unk = false;
  for (size_t i = 0; i < word.size();) {
    const size_t n =
        std::min(text::utf8_length(static_cast<unsigned char>(word[i])), word.size() - i);
    const std::string_view ch = word.substr(i, n);
    i += n;
    if (auto it = vocab.find(ch); it != vocab.end()) {
      if (pending_unk) push(unk_id);
      pending_unk = false;
      push(it->second);
      continue;
    }
    if (byte_fallback) {
      bool all = true;
      for (char c : ch) all = all && byte_ids[static_cast<unsigned char>(c)] >= 0;
      if (all) {
        for (char c : ch) push(byte_ids[static_cast<unsigned char>(c)]);
        continue;
      }
    }
    if (unk_id >= 0) {
      if (pending_unk && !fuse_unk) push(unk_id);
      pending_unk = true;
    }
    // Without an unk token the character is dropped, as the reference does.
  }
  if (pending_unk) push(unk_id);

  std::priority_queue<Candidate> queue;
  const auto consider = [&](int32_t left) {
    const auto& l = sym[static_cast<size_t>(left)];
    if (l.next < 0) return;
    const auto it = merges.find(pair_key(l.id, sym[static_cast<size_t>(l.next)].id));
    if (it != merges.end()) queue.push({it->second.first, left, it->second.second});
  };
  for (int32_t i = 0; i + 1 < static_cast<int32_t>(sym.size()); ++i) consider(i);
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& left = sym[static_cast<size_t>(top.pos)];
    if (!left.alive || left.next < 0) continue;
    Symbol& right = sym[static_cast<size_t>(left.next)];
    // A stale entry: the pair at this position changed since it was queued.
    const auto it = merges.find(pair_key(left.id, right.id));
    if (it == merges.end() || it->second.second != top.new_id) continue;
    left.id = top.new_id;
    right.alive = false;
    left.next = right.next;
    if (right.next >= 0) sym[static_cast<size_t>(right.next)].prev = top.pos;
    if (left.prev >= 0) consider(left.prev);
    consider(top.pos);
  }
  for (const Symbol& s : sym)
    if (s.alive) out.push_back(s.id);
}

void Bpe::tokenize(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (ignore_merges) {
    if (auto it = vocab.find(word); it != vocab.end()) {
      out.push_back(it->second);
      return;
    }
  }
  // Long pieces (whole lines under SentencePiece-style files) are rarely repeated; caching
  // them would only churn the cache.
  constexpr size_t kMaxCachedBytes = 64;
  if (word.size() > kMaxCachedBytes) {
    merge_word(word, out);
    return;
  }
  Shard& shard = cache_[std::hash<std::string_view>{}(word) % kCacheShards];
  {
    std::lock_guard lock(shard.mu);
    if (auto it = shard.words.find(word); it != shard.words.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> ids;
  merge_word(word, ids);
  out.insert(out.end(), ids.begin(), ids.end());
  std::lock_guard lock(shard.mu);
  if (shard.words.size() >= kCacheMaxWords) shard.words.clear();
  shard.words.emplace(std::string(word), std::move(ids));
}

}  // namespace deltamoe::io::hf
