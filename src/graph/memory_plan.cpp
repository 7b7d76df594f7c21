// Planned execution of training steps (include/deltamoe/graph/memory_plan.h).
#include "deltamoe/graph/memory_plan.h"

#include <algorithm>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>

#include <malloc.h>

#include "deltamoe/core/error.h"
#include "deltamoe/sched/schedule.h"
#include "graph/export_impl.h"

namespace deltamoe::graph {

namespace {

uint64_t round64(uint64_t b) {
  return (b + 63) / 64 * 64;
}

uint64_t with_slack(uint64_t b, double slack) {
  return round64(static_cast<uint64_t>(std::ceil(static_cast<double>(b) * (1.0 + slack))));
}

/// Ops whose output size does not follow their inputs' row counts.
bool fixed_size(Op op) {
  switch (op) {
    case Op::sum:
    case Op::mean:
    case Op::mean_cols:
    case Op::scatter_add_rows:
    case Op::scatter_cols:
    case Op::dot_const:
    case Op::cv_squared:
    case Op::noisy_load:
      return true;
    default:
      return false;
  }
}

}  // namespace

bool MemoryPlan::same_structure(const MemoryPlan& other) const {
  if (nodes.size() != other.nodes.size() || loss_id != other.loss_id) return false;
  for (size_t i = 0; i < nodes.size(); ++i)
    if (nodes[i].op != other.nodes[i].op || nodes[i].inputs != other.nodes[i].inputs) return false;
  return true;
}

namespace {

/// Slot groups of `plan` (nodes' op, inputs, dynamic set): the routing-dependent values that
/// play the same part in each expert of a layer. A dynamic value descends from one
/// gather_rows (its root) when every dynamic input does; its key is the gathered tensor and its
/// distance from the root on the tape (each expert runs the same code, so the k-th node after
/// expert e's gather is expert e's k-th op). Values with saved intermediates stay alone.
std::vector<PlannedGroup> find_groups(const Graph& g, std::vector<PlannedNode>& nodes) {
  const int32_t n = static_cast<int32_t>(nodes.size());
  std::vector<int32_t> root(static_cast<size_t>(n), -1);
  std::map<std::pair<int32_t, int32_t>, std::vector<int32_t>> by_key;
  for (int32_t i = 0; i < n; ++i) {
    const PlannedNode& p = nodes[static_cast<size_t>(i)];
    if (!p.dynamic) continue;
    int32_t r = -1;
    if (p.op == Op::gather_rows) {
      r = i;
    } else {
      bool mixed = false;
      for (const int32_t x : p.inputs)
        if (x >= 0 && nodes[static_cast<size_t>(x)].dynamic) {
          const int32_t rx = root[static_cast<size_t>(x)];
          if (rx < 0 || (r >= 0 && rx != r)) mixed = true;
          r = rx;
        }
      if (mixed) r = -1;
    }
    root[static_cast<size_t>(i)] = r;
    if (r < 0 || g.node(Var{i}).saved.defined()) continue;
    by_key[{nodes[static_cast<size_t>(r)].inputs[0], i - r}].push_back(i);
  }
  std::vector<PlannedGroup> groups;
  for (auto& [key, members] : by_key) {
    if (members.size() < 2) continue;
    for (const int32_t m : members)
      nodes[static_cast<size_t>(m)].group = static_cast<int32_t>(groups.size());
    PlannedGroup pg;
    pg.members = std::move(members);
    groups.push_back(std::move(pg));
  }
  return groups;
}

/// What backward() may drop when it runs the step of `ex` (exact sizes, no groups) on the
/// heap: each buffer after the VJP that reads it last in the memory model.
BackwardRelease backward_release(const detail::Exported& ex, int32_t n_tape) {
  const sched::Graph& mg = ex.graph;
  BackwardRelease r;
  r.values_after.resize(static_cast<size_t>(n_tape));
  r.grads_after.resize(static_cast<size_t>(n_tape));
  // Tape ids per exported node: forward values (views too) and gradient bases.
  std::vector<std::vector<int32_t>> values_of(static_cast<size_t>(mg.size()));
  std::vector<int32_t> grad_of(static_cast<size_t>(mg.size()), -1);
  for (int32_t t = 0; t < n_tape; ++t) {
    const int32_t f = ex.fwd[static_cast<size_t>(t)];
    values_of[static_cast<size_t>(mg.base[static_cast<size_t>(f)])].push_back(t);
    const int32_t gb = ex.grad_base[static_cast<size_t>(t)];
    if (gb >= 0) grad_of[static_cast<size_t>(gb)] = t;
  }
  for (int32_t b = 0; b < mg.size(); ++b) {
    if (mg.nodes[static_cast<size_t>(b)].view_of >= 0 ||
        mg.buffer_persistent[static_cast<size_t>(b)] || mg.buffer_output[static_cast<size_t>(b)])
      continue;
    int32_t last = b;
    for (const int32_t x : mg.buffer_readers[static_cast<size_t>(b)]) last = std::max(last, x);
    const int32_t after = ex.vjp_of[static_cast<size_t>(last)];
    const std::vector<int32_t>& vals = values_of[static_cast<size_t>(b)];
    if (!vals.empty()) {
      auto& dst = after < 0 ? r.values_at_start : r.values_after[static_cast<size_t>(after)];
      dst.insert(dst.end(), vals.begin(), vals.end());
    } else if (grad_of[static_cast<size_t>(b)] >= 0 && after >= 0) {
      r.grads_after[static_cast<size_t>(after)].push_back(grad_of[static_cast<size_t>(b)]);
    }
  }
  return r;
}

/// The tape's exact sizes for a plan (each value and saved intermediate rounded to 64 bytes,
/// as the planner lays them out); the loss and `keep` kept.
detail::PlanSizes exact_sizes(const Graph& g, Var loss, const std::vector<Var>& keep) {
  const size_t n = static_cast<size_t>(g.size());
  detail::PlanSizes e;
  e.fwd.assign(n, 0);
  e.grad.assign(n, 0);
  for (size_t i = 0; i < n; ++i) {
    const Node& nd = g.node(Var{static_cast<int32_t>(i)});
    if (nd.op == Op::input || nd.op == Op::param) continue;
    e.grad[i] = round64(nd.value.nbytes());
    e.fwd[i] = e.grad[i] + (nd.saved.defined() ? round64(nd.saved.nbytes()) : 0);
  }
  e.keep = keep;
  e.keep.push_back(loss);  // every caller reads the loss after backward()
  return e;
}

}  // namespace

BackwardRelease plan_backward_release(const Graph& g, Var loss, const std::vector<Var>& keep) {
  const detail::PlanSizes exact = exact_sizes(g, loss, keep);
  return backward_release(detail::build(g, loss, {}, &exact), static_cast<int32_t>(g.size()));
}

MemoryPlan plan_step_memory(const Graph& g, Var loss, const std::vector<Var>& keep,
                            const MemoryPlan* grow_from, const MemoryPlanOptions& opt) {
  DELTAMOE_CHECK(opt.slack >= 0.0 && std::isfinite(opt.slack), "graph",
                 "memory plan: slack must be >= 0, got ", opt.slack);
  const auto t0 = std::chrono::steady_clock::now();
  const int32_t n = static_cast<int32_t>(g.size());
  MemoryPlan plan;
  plan.loss_id = loss.id;
  plan.nodes.resize(static_cast<size_t>(n));
  const detail::PlanSizes exact = exact_sizes(g, loss, keep);
  detail::PlanSizes sized;
  for (int32_t i = 0; i < n; ++i) {
    const Node& nd = g.node(Var{i});
    PlannedNode& p = plan.nodes[static_cast<size_t>(i)];
    p.op = nd.op;
    p.inputs = nd.inputs;
    if (nd.op == Op::input || nd.op == Op::param) continue;
    p.dynamic = nd.op == Op::gather_rows || nd.op == Op::gate_weights;
    if (!fixed_size(nd.op))
      for (const int32_t x : nd.inputs)
        if (x >= 0 && plan.nodes[static_cast<size_t>(x)].dynamic) p.dynamic = true;
    const uint64_t v = exact.grad[static_cast<size_t>(i)];  // the value, rounded
    const uint64_t s = exact.fwd[static_cast<size_t>(i)] - v;
    const double slack = p.dynamic ? opt.slack : 0.0;
    p.value_bytes = with_slack(v, slack);
    p.saved_bytes = s > 0 ? with_slack(s, slack) : 0;
    p.grad_bytes = p.value_bytes;
  }
  plan.groups = find_groups(g, plan.nodes);
  for (PlannedGroup& pg : plan.groups) {
    uint64_t total = 0, largest = 0;
    for (const int32_t m : pg.members) {
      total += exact.grad[static_cast<size_t>(m)];
      largest = std::max(largest, exact.grad[static_cast<size_t>(m)]);
    }
    pg.capacity = with_slack(total, opt.slack);
    for (const int32_t m : pg.members) {
      PlannedNode& p = plan.nodes[static_cast<size_t>(m)];
      p.value_bytes = pg.capacity;  // a member may take the whole slot
      p.grad_bytes = with_slack(largest, opt.slack);
    }
  }
  // Grow to the previous plan's slots (the largest seen) when the structure is the same.
  if (grow_from && plan.same_structure(*grow_from) &&
      plan.groups.size() == grow_from->groups.size()) {
    for (size_t i = 0; i < plan.nodes.size(); ++i) {
      PlannedNode& p = plan.nodes[i];
      const PlannedNode& q = grow_from->nodes[i];
      p.value_bytes = std::max(p.value_bytes, q.value_bytes);
      p.saved_bytes = std::max(p.saved_bytes, q.saved_bytes);
      p.grad_bytes = std::max(p.grad_bytes, q.grad_bytes);
    }
    for (size_t k = 0; k < plan.groups.size(); ++k)
      plan.groups[k].capacity = std::max(plan.groups[k].capacity, grow_from->groups[k].capacity);
  }
  sized.fwd.resize(static_cast<size_t>(n));
  sized.grad.resize(static_cast<size_t>(n));
  sized.view_of.assign(static_cast<size_t>(n), -1);
  for (int32_t i = 0; i < n; ++i) {
    const PlannedNode& p = plan.nodes[static_cast<size_t>(i)];
    sized.fwd[static_cast<size_t>(i)] = p.value_bytes + p.saved_bytes;
    sized.grad[static_cast<size_t>(i)] = p.grad_bytes;
  }
  for (const PlannedGroup& pg : plan.groups) {
    sized.fwd[static_cast<size_t>(pg.members[0])] = pg.capacity;
    for (size_t k = 1; k < pg.members.size(); ++k)
      sized.view_of[static_cast<size_t>(pg.members[k])] = pg.members[0];
  }
  sized.keep = exact.keep;

  const detail::Exported ex = detail::build(g, loss, {}, &sized);
  const sched::Graph& mg = ex.graph;
  const sched::Order order = sched::program_order(mg);  // the engine's execution order
  const sched::Placement pl = sched::place_buffers(mg, order);
  plan.arena_bytes = pl.arena_bytes;
  plan.peak_bytes = pl.peak_bytes;
  const detail::Exported exact_ex = detail::build(g, loss, {}, &exact);
  plan.recorded_peak_bytes = sched::simulate(exact_ex.graph, order).peak;
  plan.release = backward_release(exact_ex, n);
  plan.tape_resident_bytes = tape_resident_bytes(g, loss);

  for (int32_t i = 0; i < n; ++i) {
    PlannedNode& p = plan.nodes[static_cast<size_t>(i)];
    const int32_t f = ex.fwd[static_cast<size_t>(i)];
    p.position = f;
    const int32_t b = mg.base[static_cast<size_t>(f)];
    if (mg.buffer_output[static_cast<size_t>(b)]) {
      p.live_until = INT64_MAX;
    } else {
      int64_t last = b;
      for (const int32_t r : mg.buffer_readers[static_cast<size_t>(b)])
        last = std::max<int64_t>(last, r);
      p.live_until = last;
    }
    // Views (a scatter_add_rows that took over its base, later group members) and leaves own
    // no slot of their own.
    const uint64_t off = pl.offsets[static_cast<size_t>(f)];
    if (mg.nodes[static_cast<size_t>(f)].view_of < 0 && off != sched::kNotPlaced &&
        !mg.is_persistent[static_cast<size_t>(f)] && p.op != Op::input && p.op != Op::param)
      p.fwd_offset = off;
    const int32_t gb = ex.grad_base[static_cast<size_t>(i)];
    if (gb >= 0 && !mg.is_persistent[static_cast<size_t>(gb)] &&
        pl.offsets[static_cast<size_t>(gb)] != sched::kNotPlaced)
      p.grad_offset = pl.offsets[static_cast<size_t>(gb)];
  }
  for (PlannedGroup& pg : plan.groups) {
    pg.offset = plan.nodes[static_cast<size_t>(pg.members[0])].fwd_offset;
    for (const int32_t m : pg.members) plan.nodes[static_cast<size_t>(m)].fwd_offset = kNoSlot;
  }
  plan.plan_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return plan;
}

// ---------------------------------------------------------------- PlannedAllocator

PlannedAllocator::PlannedAllocator(const MemoryPlan& plan, Arena& arena)
    : plan_(plan),
      arena_(arena),
      in_arena_(plan.nodes.size(), 0),
      group_used_(plan.groups.size(), 0) {
  DELTAMOE_CHECK(arena.capacity() >= plan.arena_bytes, "graph", "memory plan needs an arena of ",
                 plan.arena_bytes, " bytes, the arena has ", arena.capacity());
}

bool PlannedAllocator::matches(int32_t id, Op op, const std::vector<int32_t>& inputs) const {
  if (id < 0 || static_cast<size_t>(id) >= plan_.nodes.size()) return false;
  const PlannedNode& p = plan_.nodes[static_cast<size_t>(id)];
  return p.op == op && p.inputs == inputs;
}

void PlannedAllocator::check_inputs(int32_t id, const std::vector<int32_t>& inputs) const {
  // Only reached after the tape left the plan: an input still in the arena is intact iff the
  // plan kept it alive up to the last slot handed out (nothing went into the arena since).
  for (const int32_t x : inputs) {
    if (x < 0 || static_cast<size_t>(x) >= in_arena_.size() || !in_arena_[static_cast<size_t>(x)])
      continue;
    DELTAMOE_CHECK(plan_.nodes[static_cast<size_t>(x)].live_until >= frozen_at_, "graph",
                   "memory plan: tape node ", id, " reads node ", x,
                   " whose planned buffer was already reused (the step's tape left its plan at "
                   "node ",
                   diverged_at_, ")");
  }
}

void PlannedAllocator::diverge(int32_t id, const std::vector<int32_t>& inputs) {
  if (diverged_at_ < 0) {
    diverged_at_ = id;
    // The last arena position handed out is before this node's (ids before it matched).
    int64_t last = -1;
    for (size_t i = 0; i < plan_.nodes.size() && static_cast<int32_t>(i) < id; ++i)
      if (in_arena_[i]) last = std::max(last, plan_.nodes[i].position);
    frozen_at_ = last;
  }
  check_inputs(id, inputs);
}

Tensor PlannedAllocator::allocate(int32_t id, Op op, const std::vector<int32_t>& inputs,
                                  BufferRole role, const Shape& shape, bool zero) {
  if (role == BufferRole::grad) {
    if (diverged_at_ >= 0) return {};
    const PlannedNode& p = plan_.nodes[static_cast<size_t>(id)];
    const uint64_t bytes = static_cast<uint64_t>(shape_numel(shape)) * sizeof(float);
    if (p.grad_offset == kNoSlot || bytes > p.grad_bytes) {
      ++overflows_;
      overflow_bytes_ += bytes;
      return {};
    }
    Tensor t = arena_.view(p.grad_offset, shape, DType::f32);
    if (zero && bytes > 0) std::memset(t.raw(), 0, bytes);
    return t;
  }
  if (diverged_at_ < 0 && id != matched_ && !matches(id, op, inputs)) diverge(id, inputs);
  if (diverged_at_ >= 0) {
    check_inputs(id, inputs);
    return {};
  }
  matched_ = id;
  const PlannedNode& p = plan_.nodes[static_cast<size_t>(id)];
  const uint64_t bytes = static_cast<uint64_t>(shape_numel(shape)) * sizeof(float);
  if (p.group >= 0 && role == BufferRole::value) {
    // The next place in the group's slot (members come in tape order).
    const PlannedGroup& pg = plan_.groups[static_cast<size_t>(p.group)];
    uint64_t& used = group_used_[static_cast<size_t>(p.group)];
    if (pg.offset == kNoSlot || used + bytes > pg.capacity) {
      ++overflows_;
      overflow_bytes_ += bytes;
      return {};
    }
    Tensor t = arena_.view(pg.offset + used, shape, DType::f32);
    used += round64(bytes);
    if (zero && bytes > 0) std::memset(t.raw(), 0, bytes);
    in_arena_[static_cast<size_t>(id)] = 1;
    return t;
  }
  const uint64_t cap = role == BufferRole::value ? p.value_bytes : p.saved_bytes;
  if (p.fwd_offset == kNoSlot || bytes > cap) {
    ++overflows_;
    overflow_bytes_ += bytes;
    return {};
  }
  const uint64_t off = p.fwd_offset + (role == BufferRole::value ? 0 : p.value_bytes);
  Tensor t = arena_.view(off, shape, DType::f32);
  if (zero && bytes > 0) std::memset(t.raw(), 0, bytes);
  if (role == BufferRole::value) in_arena_[static_cast<size_t>(id)] = 1;
  return t;
}

void PlannedAllocator::pushed(int32_t id, Op op, const std::vector<int32_t>& inputs) {
  if (diverged_at_ < 0 && id != matched_ && !matches(id, op, inputs)) diverge(id, inputs);
  if (diverged_at_ >= 0) {
    check_inputs(id, inputs);
    return;
  }
  // A scatter_add_rows that took over its base's storage: its value lives where the base's
  // does (the plan made it a view of it).
  if (op == Op::scatter_add_rows && !inputs.empty() && inputs[0] >= 0 &&
      plan_.nodes[static_cast<size_t>(id)].fwd_offset == kNoSlot)
    in_arena_[static_cast<size_t>(id)] = in_arena_[static_cast<size_t>(inputs[0])];
}

void PlannedAllocator::begin_backward(const Graph& g, Var loss) {
  if (diverged_at_ >= 0) return;
  if (static_cast<size_t>(g.size()) != plan_.nodes.size() || loss.id != plan_.loss_id) {
    diverge(
        static_cast<int32_t>(std::min<size_t>(static_cast<size_t>(g.size()), plan_.nodes.size())),
        {});
  }
}

// ---------------------------------------------------------------- StepMemoryPlanner

StepMemoryPlanner::StepMemoryPlanner(const MemoryPlanOptions& opt) : opt_(opt) {
  DELTAMOE_CHECK(opt.slack >= 0.0 && std::isfinite(opt.slack), "graph",
                 "memory plan: slack must be >= 0, got ", opt.slack);
}

StepMemoryPlanner::~StepMemoryPlanner() = default;

void StepMemoryPlanner::begin(Graph& g) {
  alloc_.reset();
  if (!plan_) return;
  if (arena_.capacity() < plan_->arena_bytes) {
    // A new plan follows a step that ran on the heap (the first, or one that outgrew its
    // slots): give that memory back before the arena takes its own, or a process that keeps
    // freed blocks (train's mallopt) would hold both.
    malloc_trim(0);
  }
  arena_.reserve(plan_->arena_bytes);
  stats_.arena_bytes = arena_.capacity();
  alloc_ = std::make_unique<PlannedAllocator>(*plan_, arena_);
  g.set_allocator(alloc_.get());
}

void StepMemoryPlanner::backward(Graph& g, Var loss, const std::vector<Var>& keep) {
  ++stats_.steps;
  if (!alloc_) {
    // The recorded step: plan from its forward, then let its backward free as planned.
    adopt(std::make_unique<MemoryPlan>(plan_step_memory(g, loss, keep, plan_.get(), opt_)));
    g.backward(loss, &plan_->release);
    return;
  }
  g.backward(loss);
  g.set_allocator(nullptr);
  stats_.overflows += alloc_->overflows();
  if (alloc_->diverged_at() >= 0) ++stats_.diverged_steps;
  const bool followed = alloc_->overflows() == 0 && alloc_->diverged_at() < 0;
  alloc_.reset();
  if (followed) {
    ++stats_.planned_steps;
    return;
  }
  // Buffers outgrew their slots or the tape left the plan: plan again from this step (its
  // values are arena views or heap tensors that still carry their shapes).
  adopt(std::make_unique<MemoryPlan>(plan_step_memory(g, loss, keep, plan_.get(), opt_)));
}

void StepMemoryPlanner::adopt(std::unique_ptr<MemoryPlan> plan) {
  plan_ = std::move(plan);
  ++stats_.plans;
  stats_.plan_seconds += plan_->plan_seconds;
  stats_.planned_peak_bytes = plan_->arena_bytes;
  stats_.recorded_peak_bytes = plan_->recorded_peak_bytes;
  stats_.tape_resident_bytes = plan_->tape_resident_bytes;
}

std::string StepMemoryPlanner::summary() const {
  char buf[320];
  std::snprintf(buf, sizeof buf,
                "memory plan: arena %.2f MiB (step peak without slack %.2f MiB, tape holding "
                "everything %.2f MiB); %lld of %lld steps inside the arena, %lld plans, %lld "
                "overflows, %lld diverged, %.3f s planning",
                static_cast<double>(stats_.planned_peak_bytes) / 1048576.0,
                static_cast<double>(stats_.recorded_peak_bytes) / 1048576.0,
                static_cast<double>(stats_.tape_resident_bytes) / 1048576.0,
                static_cast<long long>(stats_.planned_steps), static_cast<long long>(stats_.steps),
                static_cast<long long>(stats_.plans), static_cast<long long>(stats_.overflows),
                static_cast<long long>(stats_.diverged_steps), stats_.plan_seconds);
  return buf;
}

}  // namespace deltamoe::graph
