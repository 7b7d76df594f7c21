// Continuous batching over a paged KV cache (see serve/llm_engine.h).
#include "deltamoe/serve/llm_engine.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <iostream>
#include <mutex>
#include <random>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "deltamoe/core/error.h"

namespace deltamoe::serve {

size_t stop_holdback(const std::string& text, const std::vector<std::string>& stops) {
  size_t hold = 0;
  for (const std::string& s : stops)
    for (size_t len = std::min(s.size() - (s.empty() ? 0 : 1), text.size()); len > hold; --len)
      if (text.compare(text.size() - len, len, s, 0, len) == 0) {
        hold = len;
        break;
      }
  return hold;
}

namespace {

using Mono = std::chrono::steady_clock;

double seconds(Mono::duration d) {
  return std::chrono::duration<double>(d).count();
}

// Messages of the step mirror (LlmEngineConfig::mirror), int64 words from rank 0: the KV
// pool's shape once, then one per step, then the end.
constexpr int64_t kStepHello = 1, kStepRun = 2, kStepStop = 3;

// Rank 0 sends `words` (a count, then the words) to every rank; the others pass anything and
// get rank 0's. The count is waited for asleep: the other ranks wait for it between requests.
std::vector<int64_t> broadcast_words(dist::Communicator& comm, std::vector<int64_t> words) {
  int64_t n = static_cast<int64_t>(words.size());
  comm.broadcast_waiting(&n, 8, 0);
  words.resize(static_cast<size_t>(n));
  comm.broadcast(words.data(), 8 * n, 0);
  return words;
}

struct Seq {
  int64_t id = 0;
  std::vector<int32_t> ids;  // prompt, then generated tokens
  int64_t prompt_len = 0;
  GenerationParams params;
  TokenCallback cb;
  models::KvCache cache;
  std::mt19937_64 rng;
  io::StreamDecoder decoder;
  std::string text;    // generated text so far
  size_t emitted = 0;  // bytes of text already sent
  Mono::time_point submitted, first_token, last_token;
  int64_t moe_rows = 0, routed = 0;
  bool cancelled = false;

  Seq(const io::Tokenizer& tok, std::shared_ptr<models::KvBlockPool> pool)
      : cache(std::move(pool)), decoder(tok, /*skip_special_tokens=*/true) {}
  int64_t generated() const { return static_cast<int64_t>(ids.size()) - prompt_len; }
  int64_t pending() const { return static_cast<int64_t>(ids.size()) - cache.length(); }
};

}  // namespace

struct LlmEngine::Impl {
  LlmEngine& eng;
  std::shared_ptr<models::KvBlockPool> pool;
  int64_t experts = 0;

  mutable std::mutex mu;
  std::condition_variable cv, idle_cv;
  std::deque<std::unique_ptr<Seq>> waiting;   // guarded by mu
  std::vector<std::unique_ptr<Seq>> running;  // engine thread only
  std::unordered_map<int64_t, Seq*> live;     // guarded by mu: every queued or running request
  int64_t next_id = 0;
  bool accepting = true, stopping = false;
  LlmEngineStats st;  // guarded by mu
  double routed_all = 0.0, rows_all = 0.0;
  std::thread thread;

  explicit Impl(LlmEngine& e) : eng(e) {}

  // Where the first stop string starts in the generated text (npos: none). Only text from
  // just before what was already sent can hold a new match.
  static size_t first_stop(const Seq& s) {
    size_t end = std::string::npos;
    for (const std::string& stop : s.params.stop) {
      if (stop.empty()) continue;
      const size_t at = s.text.find(stop, s.emitted > stop.size() ? s.emitted - stop.size() : 0);
      end = std::min(end, at);
    }
    return end;
  }

  // The final event of `s`, then its blocks go back and it leaves the live set. "stop":
  // the text is already cut before the stop string (or at end-of-sequence) and the decoder's
  // held-back bytes belong to it, so they are dropped; otherwise they are flushed, and since
  // no stop string can complete any more, what was held back goes out up to any stop string.
  void finish(Seq& s, const std::string& reason, const std::string& error = {},
              int32_t token = -1) {
    TokenEvent ev;
    ev.token = token;
    ev.finished = true;
    ev.finish_reason = reason;
    ev.error = error;
    if (reason == "stop") {
      s.decoder.reset();
    } else if (reason != "error") {
      s.text += s.decoder.finish();
    }
    if (reason != "error") {
      const size_t end = std::min(s.text.size(), first_stop(s));
      if (end > s.emitted) ev.text = s.text.substr(s.emitted, end - s.emitted);
      s.emitted = std::max(s.emitted, end);
    }
    ev.prompt_tokens = s.prompt_len;
    ev.completion_tokens = s.generated();
    ev.mean_experts =
        s.moe_rows ? static_cast<double>(s.routed) / static_cast<double>(s.moe_rows) : 0.0;
    if (s.generated() > 0) ev.ttft_s = seconds(s.first_token - s.submitted);
    s.cache.clear();
    // Counted before the final event goes out: a client that sees its request finished must
    // find it in the stats (counting after the callback raced with tests and /metrics).
    {
      std::lock_guard<std::mutex> lk(mu);
      ++st.requests_finished;
    }
    try {
      s.cb(ev);
    } catch (const std::exception& e) {
      std::cerr << "engine: token callback threw: " << e.what() << "\n";
    }
    std::lock_guard<std::mutex> lk(mu);
    live.erase(s.id);
    idle_cv.notify_all();
  }

  // A new token of `s` was sampled: decode, look for stop strings, send what is safe.
  // Returns true when the request is finished.
  bool on_token(Seq& s, int32_t t) {
    const auto now = Mono::now();
    {
      std::lock_guard<std::mutex> lk(mu);
      if (s.generated() == 0)
        st.ttft_s.observe(seconds(now - s.submitted));
      else
        st.tpot_s.observe(seconds(now - s.last_token));
      ++st.generated_tokens;
    }
    if (s.generated() == 0) s.first_token = now;
    s.last_token = now;
    s.ids.push_back(t);
    const bool eos = t == eng.tok_->eos_id() && !s.params.ignore_eos;
    if (!eos) s.text += s.decoder.next(t);
    const size_t stop_at = first_stop(s);
    if (eos || stop_at != std::string::npos) {
      if (stop_at != std::string::npos) s.text.resize(std::max(stop_at, s.emitted));
      finish(s, "stop", {}, t);
      return true;
    }
    if (s.generated() >= s.params.max_tokens) {
      finish(s, "length", {}, t);
      return true;
    }
    const size_t safe = s.text.size() - stop_holdback(s.text, s.params.stop);
    TokenEvent ev;
    ev.token = t;
    if (safe > s.emitted) ev.text = s.text.substr(s.emitted, safe - s.emitted);
    s.emitted = std::max(s.emitted, safe);
    s.cb(ev);
    return false;
  }

  // Moves queued requests into the running batch while their prompts' blocks are free (one
  // block per running sequence is kept back for decode growth).
  void admit() {
    std::vector<std::unique_ptr<Seq>> aborted;
    {
      std::lock_guard<std::mutex> lk(mu);
      while (!waiting.empty() && static_cast<int64_t>(running.size()) < eng.config_.max_running) {
        Seq& s = *waiting.front();
        if (!s.cancelled) {
          const int64_t need = pool->blocks_for(static_cast<int64_t>(s.ids.size()) + 1);
          const int64_t spare = pool->free_blocks() - static_cast<int64_t>(running.size());
          if (!running.empty() && need > spare) break;
        }
        (s.cancelled ? aborted : running).push_back(std::move(waiting.front()));
        waiting.pop_front();
      }
    }
    for (auto& s : aborted) finish(*s, "abort");
  }

  void run_step();
  void loop();
};

LlmEngine::LlmEngine(std::shared_ptr<const models::MoeLm> model,
                     std::shared_ptr<const io::Tokenizer> tokenizer, LlmEngineConfig config)
    : model_(std::move(model)), tok_(std::move(tokenizer)), config_(config) {
  DELTAMOE_CHECK(config_.max_batch_tokens >= 1, "engine", "max batch tokens must be ≥ 1, got ",
                 config_.max_batch_tokens);
  DELTAMOE_CHECK(config_.max_running >= 1 && config_.max_waiting >= 0, "engine",
                 "max running must be ≥ 1 and max waiting ≥ 0");
  config_.expert_queues.check();
  context_ = std::min<int64_t>(model_->config().max_position_embeddings, 1 << 20);
  auto pool = model_->make_kv_pool(config_.kv_block_tokens, 1);
  int64_t blocks = config_.kv_blocks;
  if (blocks == 0) blocks = static_cast<int64_t>(config_.kv_cache_bytes / pool->block_bytes());
  DELTAMOE_CHECK(blocks >= 1, "engine", "the KV cache of ", config_.kv_cache_bytes,
                 " bytes holds no block of ", pool->block_bytes(), " bytes (",
                 config_.kv_block_tokens, " positions); give it more memory");
  impl_ = std::make_unique<Impl>(*this);
  impl_->pool = model_->make_kv_pool(config_.kv_block_tokens, blocks);
  impl_->experts = std::max<int64_t>(1, model_->config().num_experts);
  impl_->st.expert_tokens.assign(static_cast<size_t>(impl_->experts), 0);
  impl_->st.expert_step_rows.assign(static_cast<size_t>(impl_->experts), 0);
  impl_->st.expert_queue_rows.assign(static_cast<size_t>(impl_->experts), 0);
  if (config_.mirror) {
    DELTAMOE_CHECK(!config_.expert_queues.holds(), "engine",
                   "per-expert queues that hold tokens do not run over several ranks");
    broadcast_words(*config_.mirror, {kStepHello, config_.kv_block_tokens, blocks});
  }
  impl_->thread = std::thread([this] { impl_->loop(); });
}

LlmEngine::~LlmEngine() {
  drain();
  {
    std::lock_guard<std::mutex> lk(impl_->mu);
    impl_->stopping = true;
  }
  impl_->cv.notify_all();
  impl_->thread.join();
}

int64_t LlmEngine::submit(std::vector<int32_t> prompt, GenerationParams params,
                          TokenCallback on_token) {
  const int64_t n = static_cast<int64_t>(prompt.size());
  DELTAMOE_CHECK(n >= 1, "request", "the prompt is empty");
  DELTAMOE_CHECK(params.max_tokens >= 1, "request", "max_tokens must be ≥ 1, got ",
                 params.max_tokens);
  DELTAMOE_CHECK(n + params.max_tokens <= context_, "request", "this model's context is ", context_,
                 " tokens, but the request needs ", n + params.max_tokens, " (", n,
                 " in the prompt + ", params.max_tokens, " max_tokens)");
  for (int32_t t : prompt)
    DELTAMOE_CHECK(t >= 0 && t < model_->vocab_size(), "request", "token id ", t,
                   " outside the vocabulary [0, ", model_->vocab_size(), ")");
  Impl& im = *impl_;
  const int64_t blocks = im.pool->blocks_for(n + params.max_tokens);
  DELTAMOE_CHECK(blocks <= im.pool->max_blocks(), "request", "the request needs ", blocks,
                 " KV blocks (", n + params.max_tokens, " positions) but the pool has ",
                 im.pool->max_blocks());
  auto s = std::make_unique<Seq>(*tok_, im.pool);
  s->ids = std::move(prompt);
  s->prompt_len = n;
  s->params = std::move(params);
  s->cb = std::move(on_token);
  s->rng.seed(s->params.has_seed ? s->params.seed : std::random_device{}());
  s->submitted = Mono::now();
  std::lock_guard<std::mutex> lk(im.mu);
  if (!im.accepting || static_cast<int64_t>(im.waiting.size()) >= config_.max_waiting) {
    ++im.st.requests_rejected;
    return -1;
  }
  s->id = im.next_id++;
  ++im.st.requests_submitted;
  im.st.prompt_tokens += static_cast<uint64_t>(n);
  im.live[s->id] = s.get();
  const int64_t id = s->id;
  im.waiting.push_back(std::move(s));
  im.cv.notify_all();
  return id;
}

void LlmEngine::cancel(int64_t id) {
  std::lock_guard<std::mutex> lk(impl_->mu);
  auto it = impl_->live.find(id);
  if (it != impl_->live.end()) it->second->cancelled = true;
  impl_->cv.notify_all();
}

void LlmEngine::drain(double timeout_s) {
  Impl& im = *impl_;
  std::unique_lock<std::mutex> lk(im.mu);
  im.accepting = false;
  const bool done = im.idle_cv.wait_for(lk, std::chrono::duration<double>(timeout_s),
                                        [&] { return im.live.empty(); });
  if (!done) {
    for (auto& [id, s] : im.live) s->cancelled = true;
    im.cv.notify_all();
    im.idle_cv.wait(lk, [&] { return im.live.empty(); });
  }
}

LlmEngineStats LlmEngine::stats() const {
  std::lock_guard<std::mutex> lk(impl_->mu);
  LlmEngineStats s = impl_->st;
  s.waiting = static_cast<int64_t>(impl_->waiting.size());
  s.running = static_cast<int64_t>(impl_->live.size()) - s.waiting;
  s.kv_blocks_used = impl_->pool->used_blocks();
  s.kv_blocks_total = impl_->pool->max_blocks();
  s.kv_block_bytes = impl_->pool->block_bytes();
  s.mean_experts = impl_->rows_all > 0 ? impl_->routed_all / impl_->rows_all : 0.0;
  if (const models::ExpertCache* c = model_->expert_cache()) {
    s.has_expert_cache = true;
    s.expert_cache = c->stats();
    s.expert_cache_slots = c->slots();
    s.expert_cache_experts = c->total_experts();
  }
  return s;
}

void LlmEngine::Impl::loop() {
  for (;;) {
    {
      std::unique_lock<std::mutex> lk(mu);
      cv.wait(lk, [&] { return stopping || !waiting.empty() || !running.empty(); });
      if (stopping && waiting.empty() && running.empty()) {
        if (eng.config_.mirror) broadcast_words(*eng.config_.mirror, {kStepStop});
        return;
      }
    }
    // Cancelled requests leave the batch first.
    for (auto it = running.begin(); it != running.end();) {
      bool cancelled;
      {
        std::lock_guard<std::mutex> lk(mu);
        cancelled = (*it)->cancelled;
      }
      if (cancelled) {
        finish(**it, "abort");
        it = running.erase(it);
      } else {
        ++it;
      }
    }
    admit();
    if (!running.empty()) run_step();
  }
}

void LlmEngine::Impl::run_step() {
  // Decode tokens first (one per sequence), then prefill chunks in the remaining budget.
  std::vector<Seq*> step;
  std::vector<int64_t> take;
  int64_t budget = eng.config_.max_batch_tokens;
  // A token held at an MoE layer (per-expert queues) goes on alone, even when it is a
  // one-token chunk of a prompt.
  for (int pass = 0; pass < 2; ++pass)
    for (auto& s : running) {
      const int64_t p = s->pending();
      const bool one = p == 1 || s->cache.held();
      if ((pass == 0) != one || budget == 0) continue;
      const int64_t n = one ? 1 : std::min(p, budget);
      step.push_back(s.get());
      take.push_back(n);
      budget -= n;
    }
  // KV blocks: while the step needs more than are free, the newest sequence gives its blocks
  // back and waits to be recomputed.
  for (;;) {
    int64_t need = 0;
    for (size_t i = 0; i < step.size(); ++i) need += step[i]->cache.blocks_needed(take[i]);
    if (need <= pool->free_blocks() || running.size() <= 1) break;
    std::unique_ptr<Seq> victim = std::move(running.back());
    running.pop_back();
    const auto at = std::find(step.begin(), step.end(), victim.get());
    if (at != step.end()) {
      take.erase(take.begin() + (at - step.begin()));
      step.erase(at);
    }
    victim->cache.clear();
    std::lock_guard<std::mutex> lk(mu);
    ++st.preemptions;
    waiting.push_front(std::move(victim));
  }
  if (step.empty()) return;

  std::vector<std::vector<int32_t>> tokens(step.size());
  std::vector<models::KvCache*> caches(step.size());
  int64_t rows = 0;
  for (size_t i = 0; i < step.size(); ++i) {
    const int64_t from = step[i]->cache.length();
    tokens[i].assign(step[i]->ids.begin() + from, step[i]->ids.begin() + from + take[i]);
    caches[i] = &step[i]->cache;
    rows += take[i];
  }
  const int64_t vocab = eng.model_->vocab_size();
  std::vector<float> logits(step.size() * static_cast<size_t>(vocab));
  models::LmStats ls;
  const auto t0 = Mono::now();
  int64_t finished = 0;
  if (dist::Communicator* comm = eng.config_.mirror) {
    // The other ranks run this step too: live sequences (the others' caches go), then each
    // step sequence's id, cache position and tokens.
    std::vector<int64_t> msg = {kStepRun, static_cast<int64_t>(running.size())};
    for (const auto& s : running) msg.push_back(s->id);
    msg.push_back(static_cast<int64_t>(step.size()));
    for (size_t i = 0; i < step.size(); ++i) {
      msg.insert(msg.end(),
                 {step[i]->id, step[i]->cache.length(), static_cast<int64_t>(tokens[i].size())});
      msg.insert(msg.end(), tokens[i].begin(), tokens[i].end());
    }
    broadcast_words(*comm, msg);
  }
  try {
    finished =
        eng.model_->forward_batch(tokens, caches, logits.data(), &ls, eng.config_.expert_queues);
  } catch (const std::exception& e) {
    // Nothing in a step is the client's fault (requests were checked at submit): every
    // sequence of it ends with the reason rather than leaving the server stuck.
    std::cerr << "engine: step failed: " << e.what() << "\n";
    // Over several ranks a step that failed here may have run elsewhere: the ranks' next
    // collectives would not match, so the whole job ends (as a failing command does).
    if (eng.config_.mirror) dist::abort_world(1);
    for (Seq* s : step) {
      finish(*s, "error", e.what());
      running.erase(std::find_if(running.begin(), running.end(),
                                 [&](const auto& p) { return p.get() == s; }));
    }
    return;
  }
  const double busy = seconds(Mono::now() - t0);
  std::vector<uint64_t> per_expert(static_cast<size_t>(experts), 0);
  for (size_t e = 0; e < per_expert.size() && e < ls.expert_rows.size(); ++e)
    per_expert[e] = static_cast<uint64_t>(ls.expert_rows[e]);
  for (size_t i = 0; i < step.size(); ++i) {
    step[i]->moe_rows += ls.seq_moe_rows[i];
    step[i]->routed += ls.seq_routed[i];
  }
  // Rows waiting in the queues: the not yet run experts of held tokens.
  std::vector<uint64_t> queued(static_cast<size_t>(experts), 0);
  int64_t held = 0;
  Mono::time_point deadline = Mono::time_point::max();
  for (const auto& s : running)
    if (const models::HeldToken* ht = s->cache.held()) {
      ++held;
      deadline = std::min(
          deadline,
          ht->since + std::chrono::duration_cast<Mono::duration>(
                          std::chrono::duration<double>(eng.config_.expert_queues.max_wait_s)));
      for (size_t j = 0; j < ht->experts.size(); ++j)
        if (!ht->done[j] && ht->experts[j] < experts) ++queued[static_cast<size_t>(ht->experts[j])];
    }
  {
    std::lock_guard<std::mutex> lk(mu);
    ++st.steps;
    st.busy_s += busy;
    st.batch_sequences.observe(static_cast<double>(step.size()));
    st.batch_tokens.observe(static_cast<double>(rows));
    for (size_t e = 0; e < per_expert.size(); ++e) st.expert_tokens[e] += per_expert[e];
    st.expert_step_rows = per_expert;
    st.expert_queue_rows = queued;
    st.expert_runs += static_cast<uint64_t>(ls.expert_runs);
    st.held_tokens = held;
    st.held_token_steps += static_cast<uint64_t>(held);
    routed_all += static_cast<double>(ls.routed_experts);
    rows_all += static_cast<double>(ls.moe_rows);
  }
  // Every running sequence is held: nothing changes before the first deadline, unless a
  // request arrives or one is cancelled.
  if (finished == 0 && held == static_cast<int64_t>(running.size())) {
    std::unique_lock<std::mutex> lk(mu);
    cv.wait_until(lk, deadline, [&] {
      return stopping || !waiting.empty() ||
             std::any_of(running.begin(), running.end(),
                         [](const auto& s) { return s->cancelled; });
    });
  }
  // Sequences whose tokens are all cached now sample their next token.
  std::vector<Seq*> done;
  for (size_t i = 0; i < step.size(); ++i) {
    Seq& s = *step[i];
    if (s.pending() != 0) continue;
    const int32_t t = models::sample_token(logits.data() + i * static_cast<size_t>(vocab), vocab,
                                           s.params.temperature, s.params.top_p, s.rng);
    bool cancelled;
    {
      std::lock_guard<std::mutex> lk(mu);
      cancelled = s.cancelled;
    }
    if (cancelled) {
      finish(s, "abort");
      done.push_back(&s);
    } else if (on_token(s, t)) {
      done.push_back(&s);
    }
  }
  if (!done.empty())
    running.erase(std::remove_if(running.begin(), running.end(),
                                 [&](const auto& p) {
                                   return std::find(done.begin(), done.end(), p.get()) !=
                                          done.end();
                                 }),
                  running.end());
}

void follow_llm_steps(const models::MoeLm& model, dist::Communicator& comm) {
  std::vector<int64_t> msg = broadcast_words(comm, {});
  DELTAMOE_CHECK(msg.size() == 3 && msg[0] == kStepHello, "engine", "rank ", comm.rank(),
                 ": expected the KV pool's shape from rank 0");
  const auto pool = model.make_kv_pool(msg[1], msg[2]);
  std::unordered_map<int64_t, std::unique_ptr<models::KvCache>> caches;
  for (;;) {
    msg = broadcast_words(comm, {});
    DELTAMOE_CHECK(!msg.empty() && (msg[0] == kStepRun || msg[0] == kStepStop), "engine", "rank ",
                   comm.rank(), ": unknown step message");
    if (msg[0] == kStepStop) return;
    size_t at = 1;
    const auto word = [&] {
      DELTAMOE_CHECK(at < msg.size(), "engine", "rank ", comm.rank(), ": truncated step message");
      return msg[at++];
    };
    // Sequences rank 0 no longer runs (finished, cancelled, preempted) give their blocks back.
    std::unordered_set<int64_t> alive;
    for (int64_t i = 0, n = word(); i < n; ++i) alive.insert(word());
    for (auto it = caches.begin(); it != caches.end();)
      it = alive.count(it->first) ? std::next(it) : caches.erase(it);
    const int64_t seqs = word();
    std::vector<std::vector<int32_t>> tokens(static_cast<size_t>(seqs));
    std::vector<models::KvCache*> step(static_cast<size_t>(seqs));
    for (int64_t i = 0; i < seqs; ++i) {
      const int64_t id = word(), start = word(), n = word();
      auto& c = caches[id];
      if (!c) c = std::make_unique<models::KvCache>(pool);
      if (start == 0) c->clear();  // a preempted sequence starts over
      DELTAMOE_CHECK(c->length() == start, "engine", "rank ", comm.rank(), ": sequence ", id,
                     " continues at position ", start, " but its cache holds ", c->length());
      for (int64_t j = 0; j < n; ++j)
        tokens[static_cast<size_t>(i)].push_back(static_cast<int32_t>(word()));
      step[static_cast<size_t>(i)] = c.get();
    }
    // With stats, as rank 0 asks for them: gathering them is collective under --parallel ep.
    // No LM head: only rank 0 samples (the head has no collective in any layout).
    models::LmStats ls;
    model.forward_batch(tokens, step, nullptr, &ls);
  }
}

}  // namespace deltamoe::serve
