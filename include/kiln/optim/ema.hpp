// kiln/optim/ema.hpp — ExponentialMovingAverage: a shadow copy of parameters that follows them
// with a decay (the "EMA weights" of diffusion models and GANs), copy_to, store/restore to swap
// the averaged weights in for evaluation, and a state dict. Builds on optim/optimizer.hpp.
#pragma once

#include <kiln/optim/optimizer.hpp>

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace kiln::optim {

// shadow ← shadow - (1 - d)·(shadow - p) after every update(), i.e. d·shadow + (1 - d)·p, with
// d = decay, or with use_num_updates d = min(decay, (1 + n) / (10 + n)) at the n-th update (n = 1,
// 2, ...) so that early averages are not dominated by the initial weights (the torch_ema package's
// rule). The shadow starts as a copy of the parameters.
class ExponentialMovingAverage {
 public:
  ExponentialMovingAverage(Parameters params, double decay, bool use_num_updates = false)
      : params_(std::move(params)), decay_(decay), use_num_updates_(use_num_updates) {
    if (!(decay >= 0.0 && decay <= 1.0))
      detail::throw_optim_error("ExponentialMovingAverage", "decay must be in [0, 1], got " + std::to_string(decay));
    for (std::size_t i = 0; i < params_.size(); ++i) {
      if (!params_[i].defined())
        detail::throw_optim_error("ExponentialMovingAverage", "parameter " + std::to_string(i) + " is an undefined tensor");
      shadow_.push_back(params_[i].detach().clone());
    }
  }

  // Moves the shadow towards the tracked parameters' current values.
  void update() { update(params_); }
  // Moves the shadow towards `params` (same shapes as the tracked ones).
  void update(const Parameters& params) {
    check_shapes("update", params);
    ++num_updates_;
    const double d = current_decay();
    const float one_minus_decay = static_cast<float>(1.0 - d);
    NoGrad guard;
    for (std::size_t i = 0; i < shadow_.size(); ++i) {
      Tensor<float>& s = shadow_[i];
      const Tensor<float> p = params[i].detach();
      s.assign(s - one_minus_decay * (s - p));
    }
  }
  // The decay the last update() used (decay itself before any update).
  double current_decay() const {
    if (!use_num_updates_ || num_updates_ == 0) return decay_;
    const double n = static_cast<double>(num_updates_);
    return std::min(decay_, (1.0 + n) / (10.0 + n));
  }

  // Writes the averaged weights into the tracked parameters (or into `params`).
  void copy_to() const { copy_to(params_); }
  void copy_to(const Parameters& params) const {
    check_shapes("copy_to", params);
    NoGrad guard;
    for (std::size_t i = 0; i < shadow_.size(); ++i) params[i].detach().assign(shadow_[i]);
  }
  // Saves the tracked parameters' current values, for restore().
  void store() {
    stored_.clear();
    for (const Tensor<float>& p : params_) stored_.push_back(p.detach().clone());
  }
  // Puts the values saved by store() back into the tracked parameters.
  void restore() {
    if (stored_.empty() && !params_.empty())
      detail::throw_optim_error("ExponentialMovingAverage::restore", "nothing was stored (call store() first)");
    NoGrad guard;
    for (std::size_t i = 0; i < params_.size(); ++i) params_[i].detach().assign(stored_[i]);
    stored_.clear();
  }

  const Parameters& shadow_params() const { return shadow_; }
  double decay() const { return decay_; }
  std::int64_t num_updates() const { return num_updates_; }

  // Tensors "shadow.<i>" (shared with this object), counter "num_updates", values "decay" and
  // "use_num_updates".
  StateDict state_dict() const {
    StateDict dict;
    dict.kind = "ExponentialMovingAverage";
    for (std::size_t i = 0; i < shadow_.size(); ++i) dict.tensors["shadow." + std::to_string(i)] = shadow_[i];
    dict.counters["num_updates"] = num_updates_;
    dict.values["decay"] = decay_;
    dict.values["use_num_updates"] = use_num_updates_ ? 1.0 : 0.0;
    return dict;
  }
  // Restores a state saved by state_dict() for parameters of the same shapes (tensors are copied).
  void load_state_dict(const StateDict& dict) {
    const std::string who = "ExponentialMovingAverage::load_state_dict";
    if (dict.kind != "ExponentialMovingAverage")
      detail::throw_optim_error(who, "the state dict belongs to '" + dict.kind + "'");
    if (dict.tensors.size() != shadow_.size())
      detail::throw_optim_error(who, "the state dict holds " + std::to_string(dict.tensors.size()) +
                                         " tensors for " + std::to_string(shadow_.size()) + " parameters");
    std::vector<Tensor<float>> shadow;
    for (std::size_t i = 0; i < shadow_.size(); ++i) {
      const std::string key = "shadow." + std::to_string(i);
      const auto it = dict.tensors.find(key);
      if (it == dict.tensors.end()) detail::throw_optim_error(who, "the state dict has no '" + key + "'");
      if (!it->second.defined() || it->second.shape() != shadow_[i].shape())
        throw_shape_error("optim::ExponentialMovingAverage::load_state_dict",
                          "'" + key + "' does not have the shape of parameter " + std::to_string(i),
                          it->second.defined() ? it->second.shape() : Shape{}, shadow_[i].shape());
      shadow.push_back(it->second.detach().clone());
    }
    const auto n = dict.counters.find("num_updates");
    const auto decay = dict.values.find("decay");
    const auto use = dict.values.find("use_num_updates");
    if (n == dict.counters.end() || decay == dict.values.end() || use == dict.values.end())
      detail::throw_optim_error(who, "the state dict needs 'num_updates', 'decay' and 'use_num_updates'");
    if (!(decay->second >= 0.0 && decay->second <= 1.0) || n->second < 0)
      detail::throw_optim_error(who, "invalid decay or num_updates");
    shadow_ = std::move(shadow);
    num_updates_ = n->second;
    decay_ = decay->second;
    use_num_updates_ = use->second != 0.0;
  }

 private:
  void check_shapes(const char* op, const Parameters& params) const {
    if (params.size() != shadow_.size())
      detail::throw_optim_error(std::string("ExponentialMovingAverage::") + op,
                                "got " + std::to_string(params.size()) + " parameters, the average holds " +
                                    std::to_string(shadow_.size()));
    for (std::size_t i = 0; i < params.size(); ++i)
      if (!params[i].defined() || params[i].shape() != shadow_[i].shape())
        throw_shape_error((std::string("optim::ExponentialMovingAverage::") + op).c_str(),
                          "parameter " + std::to_string(i) + " does not have the averaged shape",
                          params[i].defined() ? params[i].shape() : Shape{}, shadow_[i].shape());
  }

  Parameters params_;
  std::vector<Tensor<float>> shadow_;
  std::vector<Tensor<float>> stored_;
  double decay_;
  bool use_num_updates_;
  std::int64_t num_updates_ = 0;
};

}  // namespace kiln::optim
