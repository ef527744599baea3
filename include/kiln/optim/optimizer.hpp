// kiln/optim/optimizer.hpp — the base of kiln's optimizers: parameter groups with their own hyper-
// parameters, step() and zero_grad(), learning-rate access, and state dicts that save and restore
// the per-parameter state bit-exactly; also StateDict, the one format of every optim state.
// Builds on core/tensor.hpp, autograd/graph.hpp (NoGrad, grad()), expr/ops.hpp (fused in-place
// updates) and backend/cpu/backend.hpp (Backend<cpu> evaluates them, threaded).
#pragma once

#include <kiln/autograd/fused.hpp>  // defines record_fused, which assign() instantiates
#include <kiln/autograd/graph.hpp>
#include <kiln/backend/cpu/backend.hpp>
#include <kiln/core/error.hpp>
#include <kiln/core/tensor.hpp>
#include <kiln/expr/eval.hpp>
#include <kiln/expr/ops.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <map>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace kiln::optim {

// The tensors an optimizer updates. Each Tensor shares storage and autograd state with the
// module's parameter it was copied from, so updates are seen by the module.
using Parameters = std::vector<Tensor<float>>;

// The hyper-parameters of one parameter group by name ("lr", "weight_decay", "momentum", ...;
// flags are 0 or 1) and the flat indices of the group's parameters.
struct ParamGroupState {
  std::vector<std::size_t> params;
  std::map<std::string, double> hyper_parameters;
};

// Everything an optimizer, schedule or weight average needs to continue exactly where it stopped,
// in one format a checkpoint writer can store: named float tensors (optimizers:
// "state.<flat param index>.<name>", e.g. "state.3.exp_avg"), named integer counters ("step",
// "state.<i>.step"), named numbers and, for optimizers, the parameter groups.
struct StateDict {
  std::string kind;                               // "SGD", "Adam", "AdamW", "RMSprop", "ExponentialMovingAverage", ...
  std::map<std::string, Tensor<float>> tensors;   // shared with the live state: clone() to keep a snapshot
  std::map<std::string, std::int64_t> counters;
  std::map<std::string, double> values;
  std::vector<ParamGroupState> groups;
};

// The state an optimizer keeps for one parameter: how many updates it has had, and its buffers.
struct ParamState {
  std::int64_t step = 0;
  std::map<std::string, Tensor<float>> tensors;

  bool has(const std::string& name) const { return tensors.count(name) != 0; }
  // The buffer called `name`, created as zeros of `shape` on first use.
  Tensor<float>& zeros_if_missing(const std::string& name, const Shape& shape) {
    auto it = tensors.find(name);
    if (it == tensors.end()) it = tensors.emplace(name, Tensor<float>(shape)).first;
    return it->second;
  }
};

namespace detail {

// An update is a few fused expressions (Adam: m, v, then p), each one pass. A large parameter
// is updated chunk by chunk so that the second and third expressions read the chunk's p, g, m, v
// back from the cache instead of memory: with 1 MiB per tensor a chunk's four or five tensors stay
// in the last-level cache (measured on a 32 MiB L3: 18% faster than whole-tensor passes at 16M
// elements; smaller chunks lose more to the per-expression overhead of ~0.3 µs than they gain).
// Each expression spreads its chunk over kiln's threads itself.
inline constexpr index_t update_chunk_elements = index_t(1) << 18;

inline Tensor<float> flat_view(const Tensor<float>& t) { return t.defined() ? t.view({t.numel()}) : t; }
inline Tensor<float> chunk_of(const Tensor<float>& flat, index_t begin, index_t end) {
  return flat.defined() ? flat.slice(0, begin, end) : flat;
}

// Calls body(tensors...) on matching pieces of tensors that all hold n elements (undefined ones are
// passed through as they are): consecutive 1-d chunks when every defined tensor is contiguous and
// n exceeds one chunk, else the whole tensors once. The chunks do not depend on the thread count.
template <class Body, class... Ts>
void update_in_chunks(index_t n, Body&& body, const Ts&... tensors) {
  static_assert((std::is_same_v<Ts, Tensor<float>> && ...), "update_in_chunks takes Tensor<float> operands");
  const bool contiguous = ((!tensors.defined() || tensors.is_contiguous()) && ...);
  if (!contiguous || n <= update_chunk_elements) {
    body(tensors...);
    return;
  }
  const std::tuple<Ts...> flats(flat_view(tensors)...);
  for (index_t begin = 0; begin < n; begin += update_chunk_elements) {
    const index_t end = std::min(n, begin + update_chunk_elements);
    std::apply([&](const auto&... f) { body(chunk_of(f, begin, end)...); }, flats);
  }
}

// Calls f with the gradient the update follows: -g when maximizing, plus weight_decay·p (L2
// regularisation, as PyTorch's `grad.add(param, alpha=weight_decay)`) when weight_decay != 0.
template <class F>
void with_effective_grad(const Tensor<float>& p, const Tensor<float>& g, bool maximize, float weight_decay, F&& f) {
  if (maximize) {
    if (weight_decay != 0.0f)
      f(-g + weight_decay * p);
    else
      f(-g);
  } else {
    if (weight_decay != 0.0f)
      f(g + weight_decay * p);
    else
      f(kiln::detail::as_expr(g));
  }
}

[[noreturn]] inline void throw_optim_error(const std::string& who, const std::string& what) {
  throw ValueError("kiln::optim::" + who + ": " + what);
}

// Throws unless lo <= value (< hi when hi_open, else <= hi); NaN fails too.
inline void check_range(const std::string& who, const char* name, double value, double lo, double hi,
                        bool hi_open = false) {
  const bool ok = value >= lo && (hi_open ? value < hi : value <= hi);
  if (!ok)
    throw_optim_error(who, std::string(name) + " must be in [" + std::to_string(lo) + ", " +
                               (std::isinf(hi) ? std::string("inf") : std::to_string(hi)) + (hi_open ? ")" : "]") +
                               ", got " + std::to_string(value));
}

}  // namespace detail

// The base of every optimizer: parameter groups, the per-parameter state, step() and zero_grad(),
// the learning rate, and state dicts. Derived classes supply the update of one parameter.
class Optimizer {
 public:
  virtual ~Optimizer() = default;
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;
  Optimizer(Optimizer&&) = default;
  Optimizer& operator=(Optimizer&&) = default;

  // "SGD", "Adam", ...
  virtual const char* kind() const = 0;

  // One update of every parameter whose grad() is defined; the others (and their state) are left
  // as they are, as PyTorch does. Runs without recording anything for autograd.
  void step() {
    NoGrad guard;
    for (std::size_t group = 0; group < groups_.size(); ++group) {
      const Parameters& params = groups_[group];
      for (std::size_t k = 0; k < params.size(); ++k) {
        const Tensor<float>& p = params[k];
        const Tensor<float> g = p.grad();
        if (!g.defined()) continue;
        const std::size_t index = first_index_[group] + k;
        if (g.shape() != p.shape())
          throw_shape_error("optim::step", "the gradient of parameter " + std::to_string(index) +
                                               " does not have the parameter's shape",
                            g.shape(), p.shape());
        ParamState& state = state_[index];
        ++state.step;
        update(group, p.detach(), g.detach(), state);
      }
    }
    ++step_count_;
  }

  // Forgets every parameter's gradient (PyTorch's zero_grad(set_to_none=True)).
  void zero_grad() {
    for (const Parameters& params : groups_)
      for (const Tensor<float>& p : params) p.zero_grad();
  }

  // The learning rate of the first group.
  double lr() const { return lr(0); }
  // Sets the learning rate of every group.
  void set_lr(double lr) {
    for (std::size_t g = 0; g < groups_.size(); ++g) set_lr(g, lr);
  }
  double lr(std::size_t group) const { return group_lr(checked_group(group)); }
  void set_lr(std::size_t group, double lr) {
    detail::check_range(kind(), "lr", lr, 0.0, std::numeric_limits<double>::infinity());
    set_group_lr(checked_group(group), lr);
  }

  std::size_t num_groups() const { return groups_.size(); }
  // The parameters of one group.
  const Parameters& group_params(std::size_t group) const { return groups_[checked_group(group)]; }
  // Every parameter, group after group: the order of the flat indices of the state dict.
  Parameters params() const {
    Parameters all;
    for (const Parameters& params : groups_) all.insert(all.end(), params.begin(), params.end());
    return all;
  }
  std::size_t num_params() const { return state_.size(); }
  // How many times step() has run.
  std::int64_t step_count() const { return step_count_; }
  // The state of the parameter with flat index `index` (no buffers before its first update).
  const ParamState& state(std::size_t index) const {
    if (index >= state_.size())
      detail::throw_optim_error(kind(), "parameter index " + std::to_string(index) + " is out of range (" +
                                            std::to_string(state_.size()) + " parameters)");
    return state_[index];
  }

  // The whole state: tensors "state.<i>.<buffer>" (shared with this optimizer, so clone them, or
  // write them out, before the next step() if you need them as they are now), counters "step"
  // (calls of step()) and "state.<i>.step", and each group's hyper-parameters.
  StateDict state_dict() const {
    StateDict dict;
    dict.kind = kind();
    dict.counters["step"] = step_count_;
    for (std::size_t i = 0; i < state_.size(); ++i) {
      const ParamState& s = state_[i];
      if (s.step == 0 && s.tensors.empty()) continue;
      const std::string prefix = "state." + std::to_string(i) + ".";
      dict.counters[prefix + "step"] = s.step;
      for (const auto& [name, t] : s.tensors) dict.tensors[prefix + name] = t;
    }
    for (std::size_t g = 0; g < groups_.size(); ++g) {
      ParamGroupState group;
      for (std::size_t k = 0; k < groups_[g].size(); ++k) group.params.push_back(first_index_[g] + k);
      group.hyper_parameters = group_hyper_parameters(g);
      dict.groups.push_back(std::move(group));
    }
    return dict;
  }

  // Restores a state saved by state_dict() of an optimizer of the same kind over parameters of the
  // same shapes in the same groups: the buffers are copied (the dict is not kept), so the next
  // step() continues bit-exactly. The groups' hyper-parameters (lr included) are restored too.
  void load_state_dict(const StateDict& dict) {
    const std::string who = std::string(kind()) + "::load_state_dict";
    if (dict.kind != kind())
      detail::throw_optim_error(who, "the state dict belongs to a '" + dict.kind + "' optimizer, not '" + kind() + "'");
    if (dict.groups.size() != groups_.size())
      detail::throw_optim_error(who, "the state dict has " + std::to_string(dict.groups.size()) +
                                         " parameter groups, this optimizer " + std::to_string(groups_.size()));
    for (std::size_t g = 0; g < groups_.size(); ++g) {
      const auto& saved = dict.groups[g].params;
      bool same = saved.size() == groups_[g].size();
      for (std::size_t k = 0; same && k < saved.size(); ++k) same = saved[k] == first_index_[g] + k;
      if (!same)
        detail::throw_optim_error(who, "group " + std::to_string(g) + " holds other parameters (" +
                                           std::to_string(saved.size()) + " saved, " +
                                           std::to_string(groups_[g].size()) + " here)");
    }
    const auto step = dict.counters.find("step");
    if (step == dict.counters.end()) detail::throw_optim_error(who, "the state dict has no 'step' counter");

    // Everything is checked and copied aside first, so a bad dict leaves this optimizer unchanged.
    std::vector<ParamState> restored(state_.size());
    const Parameters all = params();
    auto parse_index = [&](const std::string& key, std::string& rest) {
      const std::string prefix = "state.";
      std::size_t dot = key.find('.', prefix.size());
      if (key.compare(0, prefix.size(), prefix) != 0 || dot == std::string::npos)
        detail::throw_optim_error(who, "unexpected state entry '" + key + "' (expected state.<index>.<name>)");
      const std::string digits = key.substr(prefix.size(), dot - prefix.size());
      if (digits.empty() || digits.size() > 18 || digits.find_first_not_of("0123456789") != std::string::npos)
        detail::throw_optim_error(who, "unexpected state entry '" + key + "' (expected state.<index>.<name>)");
      const std::size_t index = std::stoull(digits);
      if (index >= all.size())
        detail::throw_optim_error(who, "state entry '" + key + "' names parameter " + std::to_string(index) +
                                           " of " + std::to_string(all.size()));
      rest = key.substr(dot + 1);
      return index;
    };
    const std::vector<std::string> names = state_names();
    for (const auto& [key, t] : dict.tensors) {
      std::string name;
      const std::size_t index = parse_index(key, name);
      if (std::find(names.begin(), names.end(), name) == names.end())
        detail::throw_optim_error(who, "state entry '" + key + "': '" + name + "' is not a buffer of " + kind());
      if (!t.defined()) detail::throw_optim_error(who, "state entry '" + key + "' is an undefined tensor");
      if (t.shape() != all[index].shape())
        throw_shape_error("optim::load_state_dict",
                          "state entry '" + key + "' does not have the shape of parameter " + std::to_string(index),
                          t.shape(), all[index].shape());
      restored[index].tensors[name] = t.detach().clone();
    }
    for (const auto& [key, value] : dict.counters) {
      if (key == "step") continue;
      std::string name;
      const std::size_t index = parse_index(key, name);
      if (name != "step") detail::throw_optim_error(who, "unexpected counter '" + key + "'");
      if (value < 0) detail::throw_optim_error(who, "counter '" + key + "' is negative");
      restored[index].step = value;
    }
    std::vector<std::map<std::string, double>> hyper;
    for (const auto& group : dict.groups) hyper.push_back(group.hyper_parameters);
    check_group_hyper_parameters(hyper);

    for (std::size_t g = 0; g < groups_.size(); ++g) set_group_hyper_parameters(g, hyper[g]);
    state_ = std::move(restored);
    step_count_ = step->second;
  }

 protected:
  Optimizer() = default;

  // Adds a group of parameters (each defined, none already held); the derived class stores the
  // group's hyper-parameters at the same index.
  void add_group_params(Parameters params) {
    const std::size_t first = state_.size();
    for (std::size_t k = 0; k < params.size(); ++k) {
      const Tensor<float>& p = params[k];
      if (!p.defined())
        detail::throw_optim_error(kind(), "parameter " + std::to_string(first + k) + " is an undefined tensor");
      const std::size_t index = first + k;
      auto same = [&](const Tensor<float>& q) {
        return q.storage() == p.storage() && q.offset() == p.offset() && q.shape() == p.shape() &&
               q.strides() == p.strides();
      };
      for (std::size_t j = 0; j < k; ++j)
        if (same(params[j]))
          detail::throw_optim_error(kind(), "parameter " + std::to_string(index) + " is the same tensor as parameter " +
                                                std::to_string(first + j) + "; pass each parameter once");
      for (const Parameters& other : groups_)
        for (const Tensor<float>& q : other)
          if (same(q))
            detail::throw_optim_error(kind(), "parameter " + std::to_string(index) +
                                                  " is already in another parameter group; pass each parameter once");
    }
    first_index_.push_back(first);
    state_.resize(first + params.size());
    groups_.push_back(std::move(params));
  }

  // Updates parameter p (detached: same storage, untracked) of `group` from its gradient g
  // (detached, same shape); state.step has already been incremented.
  virtual void update(std::size_t group, Tensor<float> p, Tensor<float> g, ParamState& state) = 0;
  // The names of the buffers this optimizer may keep per parameter.
  virtual std::vector<std::string> state_names() const = 0;

  virtual double group_lr(std::size_t group) const = 0;
  virtual void set_group_lr(std::size_t group, double lr) = 0;
  virtual std::map<std::string, double> group_hyper_parameters(std::size_t group) const = 0;
  // Throws when a group's saved hyper-parameters are missing or invalid (changes nothing).
  virtual void check_group_hyper_parameters(const std::vector<std::map<std::string, double>>& groups) const = 0;
  virtual void set_group_hyper_parameters(std::size_t group, const std::map<std::string, double>& values) = 0;

  std::size_t checked_group(std::size_t group) const {
    if (group >= groups_.size())
      detail::throw_optim_error(kind(), "parameter group " + std::to_string(group) + " is out of range (" +
                                            std::to_string(groups_.size()) + " groups)");
    return group;
  }

 private:
  std::vector<Parameters> groups_;
  std::vector<std::size_t> first_index_;  // flat index of each group's first parameter
  std::vector<ParamState> state_;         // by flat index
  std::int64_t step_count_ = 0;
};

// An optimizer whose groups each hold an `Options` struct (lr, weight_decay and the optimizer's own
// hyper-parameters). Options supplies `void validate(const std::string& who) const` and
// `template <class F> void for_each_field(F f)` calling f(name, field) for every double and bool
// field (for the state dict), const and non-const.
template <class Options>
class OptimizerWithOptions : public Optimizer {
 public:
  struct ParamGroup {
    Parameters params;
    Options options;
  };

  // Adds a group of parameters with its own hyper-parameters (as torch's add_param_group).
  void add_param_group(Parameters params, const Options& options) {
    options.validate(kind());
    add_group_params(std::move(params));
    options_.push_back(options);
  }
  void add_param_group(ParamGroup group) { add_param_group(std::move(group.params), group.options); }

  // The hyper-parameters of a group.
  const Options& options(std::size_t group = 0) const { return options_[checked_group(group)]; }
  // Replaces the hyper-parameters of a group (validated).
  void set_options(std::size_t group, const Options& options) {
    options.validate(kind());
    options_[checked_group(group)] = options;
  }

 protected:
  void add_groups(std::vector<ParamGroup> groups) {
    for (ParamGroup& group : groups) add_param_group(std::move(group));
  }

  double group_lr(std::size_t group) const override { return options_[group].lr; }
  void set_group_lr(std::size_t group, double lr) override { options_[group].lr = lr; }

  std::map<std::string, double> group_hyper_parameters(std::size_t group) const override {
    std::map<std::string, double> values;
    options_[group].for_each_field([&](const char* name, const auto& field) { values[name] = static_cast<double>(field); });
    return values;
  }
  Options options_from(const std::map<std::string, double>& values) const {
    Options o;
    o.for_each_field([&](const char* name, auto& field) {
      const auto it = values.find(name);
      if (it == values.end())
        detail::throw_optim_error(std::string(kind()) + "::load_state_dict",
                                  std::string("a parameter group has no hyper-parameter '") + name + "'");
      if constexpr (std::is_same_v<std::remove_cvref_t<decltype(field)>, bool>) {
        if (it->second != 0.0 && it->second != 1.0)
          detail::throw_optim_error(std::string(kind()) + "::load_state_dict",
                                    std::string("hyper-parameter '") + name + "' is a flag but holds " +
                                        std::to_string(it->second));
        field = it->second != 0.0;
      } else {
        field = it->second;
      }
    });
    return o;
  }
  void check_group_hyper_parameters(const std::vector<std::map<std::string, double>>& groups) const override {
    for (const auto& values : groups) options_from(values).validate(std::string(kind()) + "::load_state_dict");
  }
  void set_group_hyper_parameters(std::size_t group, const std::map<std::string, double>& values) override {
    options_[group] = options_from(values);
  }

  std::vector<Options> options_;
};

}  // namespace kiln::optim
