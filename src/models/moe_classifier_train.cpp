// Training loop (Adam, cosine schedule, seeded shuffling) and batched evaluation.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <numeric>

#include "deltamoe/models/moe_classifier.h"

namespace deltamoe::models {

using Clock = std::chrono::steady_clock;

Tensor take_rows(const Tensor& x, int64_t begin, int64_t end) {
  DELTAMOE_CHECK(x.dim() == 2 && begin >= 0 && begin <= end && end <= x.size(0), "model",
                 "take_rows [", begin, ", ", end, ") of ", shape_str(x.shape()));
  return x.slice(begin, end).clone();
}

namespace {

Tensor gather(const Tensor& x, const std::vector<int64_t>& idx, int64_t begin, int64_t end) {
  const int64_t d = x.size(1);
  Tensor out({end - begin, d});
  const float* xp = x.data<float>();
  float* op = out.data<float>();
  for (int64_t i = begin; i < end; ++i)
    std::copy(xp + idx[static_cast<size_t>(i)] * d, xp + (idx[static_cast<size_t>(i)] + 1) * d,
              op + (i - begin) * d);
  return out;
}

// In place: mirror left-right (flip) and shift by (dx, dy) whole pixels, zeros shifted in.
void augment_image(float* img, int64_t side, bool flip, int64_t dx, int64_t dy,
                   std::vector<float>& tmp) {
  tmp.assign(img, img + side * side);
  for (int64_t y = 0; y < side; ++y)
    for (int64_t x = 0; x < side; ++x) {
      const int64_t sy = y - dy, sx0 = x - dx;
      float v = 0.0f;
      if (sy >= 0 && sy < side && sx0 >= 0 && sx0 < side) {
        const int64_t sx = flip ? side - 1 - sx0 : sx0;
        v = tmp[static_cast<size_t>(sy * side + sx)];
      }
      img[y * side + x] = v;
    }
}

int32_t argmax_row(const float* row, int64_t d) {
  return static_cast<int32_t>(std::max_element(row, row + d) - row);
}

void progress_line(const EpochStats& s, int epochs, int64_t step, int64_t steps, double loss,
                   double acc, double k, double sps, bool tty) {
  std::fprintf(stderr,
               "%sepoch %d/%d step %lld/%lld loss %.4f acc %.2f%% avg K %.3f %.0f samples/s%s",
               tty ? "\r" : "", s.epoch, epochs, static_cast<long long>(step),
               static_cast<long long>(steps), loss, 100.0 * acc, k, sps, tty ? "   " : "\n");
  std::fflush(stderr);
}

}  // namespace

TrainSummary train(MoeClassifier& model, const Tensor& train_x, const std::vector<int32_t>& train_y,
                   const TrainOptions& opt) {
  DELTAMOE_CHECK(train_x.dim() == 2 && train_x.size(0) == static_cast<int64_t>(train_y.size()),
                 "train", "images ", shape_str(train_x.shape()), " vs ", train_y.size(), " labels");
  DELTAMOE_CHECK(opt.epochs >= 1 && opt.batch >= 1 && opt.lr > 0, "train", "bad options: epochs ",
                 opt.epochs, " batch ", opt.batch, " lr ", opt.lr);
  const int64_t total = train_x.size(0);
  int64_t n_train = std::max<int64_t>(0, total - opt.val_size);
  if (opt.max_train > 0) n_train = std::min(n_train, opt.max_train);
  DELTAMOE_CHECK(n_train >= opt.batch, "train", "only ", n_train, " training images for batch ",
                 opt.batch);
  const int64_t val_begin = total - std::min(opt.val_size, total - n_train);

  nn::AdamOptions ao;
  ao.lr = opt.lr;
  ao.weight_decay = opt.weight_decay;
  nn::Adam adam(model.params(), ao);
  model.params().zero_grad();
  std::mt19937_64 rng(opt.seed);
  std::mt19937_64 aug_rng(opt.seed ^ 0x9e3779b97f4a7c15ULL);  // augmentation only
  const int64_t side =
      static_cast<int64_t>(std::lround(std::sqrt(static_cast<double>(train_x.size(1)))));
  const bool augment = opt.augment_flip || opt.augment_shift > 0;
  DELTAMOE_CHECK(!augment || side * side == train_x.size(1), "train",
                 "augmentation needs square images, got ", train_x.size(1), " pixels");
  std::vector<float> aug_tmp;
  std::vector<int64_t> order(static_cast<size_t>(n_train));
  std::iota(order.begin(), order.end(), 0);
  const int64_t steps_per_epoch = n_train / opt.batch;  // drop the ragged last batch
  const int64_t total_steps = steps_per_epoch * opt.epochs;
  const bool tty = opt.progress && isatty(STDERR_FILENO);

  ForwardOptions fo;
  fo.training = true;
  fo.balance_alpha = opt.balance_alpha;
  fo.entropy_beta = opt.entropy_beta;
  fo.noisy_weight = opt.noisy_weight;
  fo.rng = &rng;
  fo.dropout = opt.dropout;

  TrainSummary summary;
  std::unique_ptr<graph::StepMemoryPlanner> planner;
  if (opt.memory_plan) {
    graph::MemoryPlanOptions po;
    po.slack = opt.memory_plan_slack;
    planner = std::make_unique<graph::StepMemoryPlanner>(po);
  }
  const auto t_all = Clock::now();
  int64_t step = 0;
  for (int epoch = 1; epoch <= opt.epochs; ++epoch) {
    std::shuffle(order.begin(), order.end(), rng);
    const auto t0 = Clock::now();
    EpochStats es;
    es.epoch = epoch;
    double loss_sum = 0, k_sum = 0;
    int64_t correct = 0, seen = 0;
    for (int64_t s = 0; s < steps_per_epoch; ++s, ++step) {
      const int64_t b = s * opt.batch, e = b + opt.batch;
      Tensor xb = gather(train_x, order, b, e);
      if (augment) {
        std::uniform_int_distribution<int64_t> shift(-opt.augment_shift, opt.augment_shift);
        for (int64_t i = 0; i < opt.batch; ++i) {
          const bool flip = opt.augment_flip && (aug_rng() & 1u);
          const int64_t dx = opt.augment_shift > 0 ? shift(aug_rng) : 0;
          const int64_t dy = opt.augment_shift > 0 ? shift(aug_rng) : 0;
          if (flip || dx != 0 || dy != 0)
            augment_image(xb.data<float>() + i * side * side, side, flip, dx, dy, aug_tmp);
        }
      }
      std::vector<int32_t> yb(static_cast<size_t>(opt.batch));
      for (int64_t i = b; i < e; ++i)
        yb[static_cast<size_t>(i - b)] =
            train_y[static_cast<size_t>(order[static_cast<size_t>(i)])];
      graph::Graph g(true);
      if (planner) planner->begin(g);
      ForwardOut out = model.forward(g, xb, fo);
      graph::Var loss = g.cross_entropy(out.logits, yb, opt.label_smoothing);
      if (out.aux_loss.valid()) loss = g.add(loss, out.aux_loss);
      if (planner)
        planner->backward(g, loss, {out.logits});  // accuracy below reads the logits
      else
        g.backward(loss);
      float lr_scale =
          opt.cosine ? 0.5f * (1.0f + std::cos(static_cast<float>(M_PI) * static_cast<float>(step) /
                                               static_cast<float>(total_steps)))
                     : 1.0f;
      if (step < opt.warmup_steps)
        lr_scale *= static_cast<float>(step + 1) / static_cast<float>(opt.warmup_steps);
      adam.step(lr_scale);
      const float lv = g.scalar(loss);
      DELTAMOE_CHECK(std::isfinite(lv), "train", "loss became ", lv, " at epoch ", epoch, " step ",
                     s);
      summary.step_losses.push_back(lv);
      loss_sum += lv;
      const float* lg = g.value(out.logits).data<float>();
      const int64_t classes = g.value(out.logits).size(1);
      for (int64_t i = 0; i < opt.batch; ++i)
        correct += argmax_row(lg + i * classes, classes) == yb[static_cast<size_t>(i)];
      seen += opt.batch;
      double kb = 0;
      for (const auto& lr : out.layers) kb += lr.routing.mean_experts();
      k_sum += kb / static_cast<double>(out.layers.size());
      if (opt.progress &&
          (tty ? (s % 10 == 9 || s + 1 == steps_per_epoch) : s + 1 == steps_per_epoch)) {
        const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
        progress_line(es, opt.epochs, s + 1, steps_per_epoch, loss_sum / static_cast<double>(s + 1),
                      static_cast<double>(correct) / static_cast<double>(seen),
                      k_sum / static_cast<double>(s + 1), static_cast<double>(seen) / secs,
                      tty && s + 1 < steps_per_epoch);
      }
    }
    es.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    es.train_loss = loss_sum / static_cast<double>(steps_per_epoch);
    es.train_accuracy = static_cast<double>(correct) / static_cast<double>(seen);
    es.avg_experts = k_sum / static_cast<double>(steps_per_epoch);
    es.samples_per_s = static_cast<double>(seen) / es.seconds;
    if (val_begin < total) {
      Tensor vx = take_rows(train_x, val_begin, total);
      std::vector<int32_t> vy(train_y.begin() + val_begin, train_y.end());
      es.val_accuracy = evaluate(model, vx, vy).accuracy;
      if (opt.progress)
        std::fprintf(stderr, "epoch %d: val acc %.2f%%\n", epoch, 100.0 * es.val_accuracy);
    }
    summary.epochs.push_back(es);
  }
  summary.seconds = std::chrono::duration<double>(Clock::now() - t_all).count();
  if (planner) {
    summary.memory_plan = planner->stats();
    if (opt.progress) std::fprintf(stderr, "%s\n", planner->summary().c_str());
  }
  model.freeze_policies();
  return summary;
}

EvalResult evaluate(MoeClassifier& model, const Tensor& x, const std::vector<int32_t>& y,
                    int64_t batch, const std::vector<std::vector<int32_t>>* forced_k,
                    dist::Communicator* comm) {
  const auto& c = model.config();
  const int64_t n = x.size(0), tps = c.tokens_per_sample();
  DELTAMOE_CHECK(n == static_cast<int64_t>(y.size()) && n > 0, "eval", "images ",
                 shape_str(x.shape()), " vs ", y.size(), " labels");
  EvalResult r;
  r.predicted.resize(static_cast<size_t>(n));
  r.experts_used.assign(static_cast<size_t>(n), 0.0f);
  r.token_k.assign(static_cast<size_t>(c.layers),
                   std::vector<int32_t>(static_cast<size_t>(n * tps)));
  r.load.assign(static_cast<size_t>(c.layers),
                std::vector<int64_t>(static_cast<size_t>(c.experts)));
  r.class_expert.assign(static_cast<size_t>(c.classes),
                        std::vector<int64_t>(static_cast<size_t>(c.experts)));
  int64_t correct = 0, routed = 0;
  double seconds = 0;
  // Packed once per call (a few ms, outside the timed forward passes): the weights may have
  // changed since the last evaluation (training evaluates after every epoch).
  const PackedWeights packed = model.pack_weights();
  for (int64_t b = 0; b < n; b += batch) {
    const int64_t e = std::min(n, b + batch);
    Tensor xb = x.slice(b, e);
    std::vector<std::vector<int32_t>> fk;
    if (forced_k)
      for (const auto& layer : *forced_k)
        fk.emplace_back(layer.begin() + b * tps, layer.begin() + e * tps);
    ForwardOptions fo;
    fo.forced_k = forced_k ? &fk : nullptr;
    fo.packed = &packed;
    fo.comm = comm;
    const auto t0 = Clock::now();
    graph::Graph g(false);
    ForwardOut out = model.forward(g, xb, fo);
    seconds += std::chrono::duration<double>(Clock::now() - t0).count();
    const float* lg = g.value(out.logits).data<float>();
    for (int64_t i = b; i < e; ++i) {
      const int32_t pred = argmax_row(lg + (i - b) * c.classes, c.classes);
      r.predicted[static_cast<size_t>(i)] = pred;
      correct += pred == y[static_cast<size_t>(i)];
    }
    for (int64_t l = 0; l < c.layers; ++l) {
      const auto& rr = out.layers[static_cast<size_t>(l)].routing;
      routed += static_cast<int64_t>(rr.expert_ids.size());
      for (int64_t t = 0; t < (e - b) * tps; ++t) {
        const int64_t sample = b + t / tps;
        const int32_t k = rr.experts_of(t);
        r.token_k[static_cast<size_t>(l)][static_cast<size_t>(b * tps + t)] = k;
        r.experts_used[static_cast<size_t>(sample)] += static_cast<float>(k);
        for (int32_t j = rr.offsets[t]; j < rr.offsets[t + 1]; ++j) {
          ++r.load[static_cast<size_t>(l)][static_cast<size_t>(rr.expert_ids[j])];
          ++r.class_expert[static_cast<size_t>(y[static_cast<size_t>(sample)])]
                          [static_cast<size_t>(rr.expert_ids[j])];
        }
      }
    }
  }
  const float per = 1.0f / static_cast<float>(tps * c.layers);
  for (float& v : r.experts_used) v *= per;
  r.accuracy = static_cast<double>(correct) / static_cast<double>(n);
  r.avg_experts = static_cast<double>(routed) / static_cast<double>(n * tps * c.layers);
  r.expert_flops_per_sample =
      static_cast<double>(routed) * c.expert_flops_per_token() / static_cast<double>(n);
  r.seconds = seconds;
  r.samples_per_s = static_cast<double>(n) / seconds;
  return r;
}

void calibrate_policy(MoeClassifier& model, const moe::PolicySpec& spec, const Tensor& x,
                      int passes, int64_t batch) {
  model.set_policy(spec);
  if (spec.target_k <= 0) return;
  ForwardOptions fo;
  fo.adapt = true;
  for (int pass = 0; pass < passes; ++pass)
    for (int64_t b = 0; b + batch <= x.size(0); b += batch) {
      graph::Graph g(false);
      model.forward(g, x.slice(b, b + batch), fo);
    }
  // Freeze: rebuild each layer's policy from its adapted state without the controller.
  std::vector<moe::PolicySpec> adapted;
  for (int64_t l = 0; l < model.config().layers; ++l) {
    moe::PolicySpec s = moe::current_spec(spec, model.policy(l));
    s.target_k = 0;
    adapted.push_back(s);
  }
  model.set_layer_policies(adapted);
}

}  // namespace deltamoe::models
