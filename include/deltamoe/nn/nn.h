// Trainable parameters, initialisers and the Adam optimizer, over graph::Graph.
//
// A ParameterSet owns named f32 tensors and their gradients (same shapes). A model binds
// its parameters into each step's graph with bind(); backward() accumulates gradients into
// the set; Adam::step() updates the values in place and zeroes the gradients.
// Thread-safety: none (one trainer thread; the ops parallelise internally).
#pragma once

#include <cstdint>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "deltamoe/core/tensor.h"
#include "deltamoe/graph/graph.h"

namespace deltamoe::nn {

struct Parameter {
  std::string name;
  Tensor value;
  Tensor grad;
};

class ParameterSet {
 public:
  /// Adds a zero-initialised parameter; throws Error("nn") if the name exists. Returns a
  /// handle aliasing the parameter's storage (Tensor copies share bytes).
  Tensor add(const std::string& name, Shape shape);
  /// The parameter's value; throws Error("nn") naming it if absent.
  Tensor& get(const std::string& name);
  const Tensor& get(const std::string& name) const;
  bool has(const std::string& name) const { return index_.count(name) != 0; }
  /// Leaf for the parameter in `g` (grad-tracking when g has gradients enabled).
  graph::Var bind(graph::Graph& g, const std::string& name);
  void zero_grad();
  /// In insertion order.
  std::vector<Parameter>& params() { return params_; }
  const std::vector<Parameter>& params() const { return params_; }
  int64_t numel() const;

 private:
  std::vector<Parameter> params_;
  std::map<std::string, size_t> index_;
};

/// PyTorch nn.Linear's default init: weight and bias uniform in ±1/√fan_in.
void init_linear(Tensor& weight, Tensor* bias, std::mt19937_64& rng);
/// Uniform in ±bound.
void init_uniform(Tensor& t, float bound, std::mt19937_64& rng);
/// Normal(0, stddev).
void init_normal(Tensor& t, float stddev, std::mt19937_64& rng);

struct AdamOptions {
  float lr = 1e-3f;
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  float weight_decay = 0.0f;  // decoupled (AdamW) when > 0
};

/// Adam (Kingma & Ba 2015) with bias correction; AdamW-style decoupled weight decay.
class Adam {
 public:
  Adam(ParameterSet& params, AdamOptions options);
  /// One update from the accumulated gradients, then zero_grad(). `lr_scale` multiplies lr
  /// for this step (schedules).
  void step(float lr_scale = 1.0f);
  int64_t steps() const { return t_; }
  /// The first and second moment estimates, one per parameter in the set's order, and the
  /// step count: the state a checkpoint saves and a resumed run restores (the tensors are
  /// the optimizer's own; write into them to restore).
  std::vector<Tensor>& first_moments() { return m_; }
  std::vector<Tensor>& second_moments() { return v_; }
  void set_steps(int64_t steps) { t_ = steps; }
  const AdamOptions& options() const { return opt_; }

 private:
  ParameterSet& params_;
  AdamOptions opt_;
  std::vector<Tensor> m_, v_;
  int64_t t_ = 0;
};

}  // namespace deltamoe::nn
