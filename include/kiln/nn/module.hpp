// kiln/nn/module.hpp — nn::BasicModule<T, Device> (nn::Module is the float/CPU one): named parameters,
// buffers and child modules with PyTorch's dotted names, train/eval, zero_grad, freeze, state dicts.
// Builds on core/tensor.hpp and autograd/graph.hpp (requires_grad, gradients, NoGrad).
#pragma once

#include <kiln/autograd/graph.hpp>
#include <kiln/core/device.hpp>
#include <kiln/core/error.hpp>
#include <kiln/core/tensor.hpp>

#include <concepts>
#include <cstddef>
#include <deque>
#include <memory>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

namespace kiln::nn {

// Naming convention of kiln's layers: `BasicX<T, Device>` is the layer for any element type and
// device, and `X` is `BasicX<float, cpu>` (as std::basic_string and std::string):
//   nn::Linear fc(784, 256, true, rng);              // float on the CPU
//   nn::BasicLinear<double> fc64(3, 2, true, rng);   // double, e.g. for gradcheck
// A module's parameters, buffers and children all share its T and Device.

// A state dict that does not fit a module: the message lists every missing, unexpected and
// mis-shaped entry (with both shapes).
class StateDictError : public Error {
 public:
  using Error::Error;
};

// An ordered map from dotted names to tensors (what state_dict() returns and load_state_dict()
// takes). Iterates in insertion order over std::pair<std::string, Tensor>; entries() is the
// std::vector<std::pair<name, tensor>> that kiln::io::save_safetensors writes.
template <class T, class Device = cpu>
class StateDict {
 public:
  using Entry = std::pair<std::string, Tensor<T, Device>>;

  StateDict() = default;
  // From (name, tensor) pairs; throws ValueError on a repeated name.
  explicit StateDict(std::vector<Entry> entries) {
    for (auto& e : entries) insert(std::move(e.first), std::move(e.second));
  }

  // Adds an entry at the end; throws ValueError when `name` is already present.
  void insert(std::string name, Tensor<T, Device> value) {
    if (index_.count(name))
      throw_value_error("nn::StateDict::insert", "the name '" + name + "' is already present");
    index_.emplace(name, entries_.size());
    entries_.emplace_back(std::move(name), std::move(value));
  }
  // Replaces the tensor of `name`, or adds the entry at the end.
  void insert_or_assign(const std::string& name, Tensor<T, Device> value) {
    if (auto it = index_.find(name); it != index_.end())
      entries_[it->second].second = std::move(value);
    else
      insert(name, std::move(value));
  }
  // Removes `name`; returns whether it was present.
  bool erase(const std::string& name) {
    auto it = index_.find(name);
    if (it == index_.end()) return false;
    entries_.erase(entries_.begin() + static_cast<std::ptrdiff_t>(it->second));
    index_.clear();
    for (std::size_t i = 0; i < entries_.size(); ++i) index_.emplace(entries_[i].first, i);
    return true;
  }

  bool contains(const std::string& name) const { return index_.count(name) != 0; }
  // The tensor of `name`; throws ValueError naming it when absent.
  const Tensor<T, Device>& at(const std::string& name) const {
    auto it = index_.find(name);
    if (it == index_.end()) throw_value_error("nn::StateDict::at", "no entry is named '" + name + "'");
    return entries_[it->second].second;
  }
  // The tensor of `name`, or nullptr.
  const Tensor<T, Device>* find(const std::string& name) const {
    auto it = index_.find(name);
    return it == index_.end() ? nullptr : &entries_[it->second].second;
  }

  std::size_t size() const { return entries_.size(); }
  bool empty() const { return entries_.empty(); }
  auto begin() const { return entries_.begin(); }
  auto end() const { return entries_.end(); }
  const std::vector<Entry>& entries() const { return entries_; }
  std::vector<std::string> keys() const {
    std::vector<std::string> out;
    out.reserve(entries_.size());
    for (const auto& e : entries_) out.push_back(e.first);
    return out;
  }

 private:
  std::vector<Entry> entries_;
  std::unordered_map<std::string, std::size_t> index_;
};

// What a non-strict load_state_dict() skipped (as PyTorch's return value).
struct LoadStateDictResult {
  std::vector<std::string> missing_keys;     // expected by the module, absent from the dict
  std::vector<std::string> unexpected_keys;  // in the dict, unknown to the module
};

// The base of every module: a plain C++ object that owns named parameters (trainable leaf
// tensors), buffers (state that is saved but not trained, such as running statistics) and child
// modules. Names follow PyTorch: "weight", "encoder.fc1.bias", "0.weight" inside a Sequential.
//
// Parameters and buffers are held by value in slots whose addresses never change, and a Tensor
// shares its storage and autograd state with its copies: the tensors parameters() returns are
// the ones the module computes with, so an optimizer may keep them. Modules are neither copied
// nor moved (the slots are referred to); share them with std::shared_ptr. A module has no virtual
// forward: each layer offers its own typed forward() and operator().
template <class T, class Device = cpu>
class BasicModule {
 public:
  using value_type = T;
  using device_type = Device;
  using tensor_type = Tensor<T, Device>;
  using module_ptr = std::shared_ptr<BasicModule>;

  static_assert(is_floating_element<T>, "kiln::nn modules hold float or double tensors");

  BasicModule() = default;
  virtual ~BasicModule() = default;
  BasicModule(const BasicModule&) = delete;
  BasicModule& operator=(const BasicModule&) = delete;
  BasicModule(BasicModule&&) = delete;
  BasicModule& operator=(BasicModule&&) = delete;

  // --- registration ---------------------------------------------------------------------------
  // Adds a parameter: a leaf tensor that requires grad (unless requires_grad is false). A tensor
  // that is the result of recorded operations is detached first (like torch.nn.Parameter); a leaf
  // that already requires grad keeps its autograd state, so registering another module's
  // parameter ties the two. Returns the module's tensor, valid for the module's lifetime.
  tensor_type& register_parameter(const std::string& name, const tensor_type& value, bool requires_grad = true) {
    check_new_name("register_parameter", name);
    if (!value.defined())
      throw_value_error("nn::Module::register_parameter", "the tensor for '" + name + "' is undefined");
    tensor_type p = value.is_leaf() ? value : value.detach();
    if (requires_grad && !p.tracks_grad()) p.requires_grad();
    if (!requires_grad && p.tracks_grad()) p = p.detach();
    parameters_.push_back(ParameterSlot{name, p, p.autograd_meta()});
    return parameters_.back().value;
  }

  // Adds a buffer: a tensor saved in the state dict (unless persistent is false) but never
  // trained; it is stored detached. Returns the module's tensor, valid for the module's lifetime
  // (assigning to it rebinds the buffer).
  tensor_type& register_buffer(const std::string& name, const tensor_type& value, bool persistent = true) {
    check_new_name("register_buffer", name);
    buffers_.push_back(BufferSlot{name, value.detach(), persistent});
    return buffers_.back().value;
  }

  // Adds a child module; returns it with its own type, for `fc = register_module("fc", ...)`.
  template <class M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> module) {
    static_assert(std::derived_from<M, BasicModule>,
                  "kiln::nn::Module::register_module: the child must derive from nn::BasicModule with the same "
                  "element type and device as its parent");
    check_new_name("register_module", name);
    if (!module) throw_value_error("nn::Module::register_module", "the module for '" + name + "' is null");
    if (static_cast<const BasicModule*>(module.get()) == this)
      throw_value_error("nn::Module::register_module", "a module cannot be its own child ('" + name + "')");
    children_.push_back(ChildSlot{name, module});
    return module;
  }

  // --- traversal ------------------------------------------------------------------------------
  // (dotted name, parameter) in registration order: this module's own, then each child's in
  // turn, depth first. A parameter reachable twice (a shared module, tied weights) is listed once.
  std::vector<std::pair<std::string, tensor_type>> named_parameters(bool recurse = true) const {
    std::vector<std::pair<std::string, tensor_type>> out;
    for_each_parameter_slot(recurse, [&](const std::string& name, const ParameterSlot& s) {
      out.emplace_back(name, s.value);
    });
    return out;
  }
  std::vector<tensor_type> parameters(bool recurse = true) const {
    std::vector<tensor_type> out;
    for_each_parameter_slot(recurse, [&](const std::string&, const ParameterSlot& s) { out.push_back(s.value); });
    return out;
  }
  // (dotted name, buffer), in the same order, non-persistent buffers included.
  std::vector<std::pair<std::string, tensor_type>> named_buffers(bool recurse = true) const {
    std::vector<std::pair<std::string, tensor_type>> out;
    std::unordered_set<const BufferSlot*> seen;
    walk_unique(*this, recurse, [&](const std::string& prefix, const BasicModule& m) {
      for (const auto& b : m.buffers_)
        if (seen.insert(&b).second) out.emplace_back(join(prefix, b.name), b.value);
    });
    return out;
  }
  std::vector<tensor_type> buffers(bool recurse = true) const {
    std::vector<tensor_type> out;
    for (auto& [name, b] : named_buffers(recurse)) out.push_back(b);
    return out;
  }
  // (name, child) for the direct children, in registration order.
  std::vector<std::pair<std::string, module_ptr>> named_children() const {
    std::vector<std::pair<std::string, module_ptr>> out;
    for (const auto& c : children_) out.emplace_back(c.name, c.module);
    return out;
  }
  std::vector<module_ptr> children() const {
    std::vector<module_ptr> out;
    for (const auto& c : children_) out.push_back(c.module);
    return out;
  }
  // (dotted name, module) for this module (named "") and every descendant, depth first, each
  // module once. The pointers do not own; they live as long as this module.
  std::vector<std::pair<std::string, BasicModule*>> named_modules() {
    std::vector<std::pair<std::string, BasicModule*>> out;
    walk_unique(*this, true, [&](const std::string& prefix, BasicModule& m) { out.emplace_back(prefix, &m); });
    return out;
  }
  std::vector<std::pair<std::string, const BasicModule*>> named_modules() const {
    std::vector<std::pair<std::string, const BasicModule*>> out;
    walk_unique(*this, true, [&](const std::string& prefix, const BasicModule& m) { out.emplace_back(prefix, &m); });
    return out;
  }

  // The parameter / buffer / module with this dotted name ("encoder.fc1.weight"); throws
  // ValueError naming it when there is none.
  tensor_type& parameter(const std::string& dotted_name) {
    auto [owner, leaf] = resolve(*this, "parameter", dotted_name);
    for (auto& s : owner->parameters_)
      if (s.name == leaf) return s.value;
    throw_value_error("nn::Module::parameter", "no parameter is named '" + dotted_name + "'");
  }
  tensor_type& buffer(const std::string& dotted_name) {
    auto [owner, leaf] = resolve(*this, "buffer", dotted_name);
    for (auto& s : owner->buffers_)
      if (s.name == leaf) return s.value;
    throw_value_error("nn::Module::buffer", "no buffer is named '" + dotted_name + "'");
  }
  module_ptr module(const std::string& dotted_name) const {
    auto [owner, leaf] = resolve(*this, "module", dotted_name);
    for (const auto& c : owner->children_)
      if (c.name == leaf) return c.module;
    throw_value_error("nn::Module::module", "no module is named '" + dotted_name + "'");
  }

  // Number of parameter elements (each shared parameter counted once); with trainable_only,
  // only those that require grad.
  index_t num_parameters(bool trainable_only = false) const {
    index_t n = 0;
    for_each_parameter_slot(true, [&](const std::string&, const ParameterSlot& s) {
      if (!trainable_only || s.value.tracks_grad()) n += s.value.numel();
    });
    return n;
  }

  // --- modes and gradients ------------------------------------------------------------------
  // Training mode on (or off) for this module and every descendant (Dropout, BatchNorm read it).
  virtual BasicModule& train(bool on = true) {
    training_ = on;
    for (auto& c : children_) c.module->train(on);
    return *this;
  }
  BasicModule& eval() { return train(false); }
  bool is_training() const { return training_; }

  // Forgets every parameter's gradient (grad() becomes undefined, as set_to_none=True).
  void zero_grad() {
    for_each_parameter_slot(true, [](const std::string&, const ParameterSlot& s) { s.value.zero_grad(); });
  }

  // Stops gradients for the parameters named `prefix` or lying under it ("encoder" freezes
  // "encoder.fc1.weight" but not "encoder2.w"; "" freezes all): they stop requiring grad and
  // their gradient is cleared, so an optimizer holding them skips them. Returns how many
  // parameters changed state; throws ValueError when the prefix matches no parameter.
  std::size_t freeze(const std::string& prefix = "") { return set_trainable("freeze", prefix, false); }
  // Undoes freeze(): the parameters require grad again, with the same autograd state as before
  // (optimizers that hold them see their gradients again).
  std::size_t unfreeze(const std::string& prefix = "") { return set_trainable("unfreeze", prefix, true); }

  // --- state dicts ----------------------------------------------------------------------------
  // Every parameter and persistent buffer by dotted name: for each module, its parameters, then
  // its buffers, then its children's entries (PyTorch's order). The tensors are detached and share
  // storage with the module (clone them for a snapshot). A shared module appears under each name.
  StateDict<T, Device> state_dict() const {
    StateDict<T, Device> out;
    walk_all(*this, "", [&](const std::string& prefix, const BasicModule& m) {
      for (const auto& p : m.parameters_) out.insert(join(prefix, p.name), p.value.detach());
      for (const auto& b : m.buffers_)
        if (b.persistent) out.insert(join(prefix, b.name), b.value.detach());
    });
    return out;
  }

  // Copies the dict's tensors into the module's parameters and persistent buffers (in place, so
  // tensors held elsewhere, e.g. by an optimizer, see the new values). Entries whose shapes
  // differ always fail; with strict, missing and unexpected names fail too. On failure nothing is
  // copied and StateDictError lists every problem. Without strict, returns what was skipped.
  LoadStateDictResult load_state_dict(const StateDict<T, Device>& dict, bool strict = true) {
    struct Target {
      std::string name;
      tensor_type* slot;
    };
    std::vector<Target> targets;
    walk_all(*this, "", [&](const std::string& prefix, BasicModule& m) {
      for (auto& p : m.parameters_) targets.push_back({join(prefix, p.name), &p.value});
      for (auto& b : m.buffers_)
        if (b.persistent) targets.push_back({join(prefix, b.name), &b.value});
    });
    LoadStateDictResult result;
    std::vector<std::string> misshaped;
    std::unordered_set<std::string> known;
    for (const auto& t : targets) {
      known.insert(t.name);
      const tensor_type* src = dict.find(t.name);
      if (!src) {
        result.missing_keys.push_back(t.name);
      } else if (!src->defined()) {
        misshaped.push_back(t.name + " (module " + to_string(t.slot->shape()) + ", state dict: undefined tensor)");
      } else if (src->shape() != t.slot->shape()) {
        misshaped.push_back(t.name + " (module " + to_string(t.slot->shape()) + ", state dict " +
                            to_string(src->shape()) + ")");
      }
    }
    for (const auto& e : dict)
      if (!known.count(e.first)) result.unexpected_keys.push_back(e.first);

    const bool fail = !misshaped.empty() || (strict && (!result.missing_keys.empty() || !result.unexpected_keys.empty()));
    if (fail) {
      std::string msg = "kiln::nn::Module::load_state_dict: the state dict does not fit the module";
      auto list = [&](const char* what, const std::vector<std::string>& names) {
        if (names.empty()) return;
        msg += std::string("\n  ") + what + " (" + std::to_string(names.size()) + "): ";
        for (std::size_t i = 0; i < names.size(); ++i) msg += (i ? ", " : "") + names[i];
      };
      if (strict) {
        list("missing", result.missing_keys);
        list("unexpected", result.unexpected_keys);
      }
      list("mis-shaped", misshaped);
      throw StateDictError(msg);
    }
    NoGrad guard;
    for (const auto& t : targets)
      if (const tensor_type* src = dict.find(t.name)) t.slot->assign(src->detach());
    return result;
  }

 private:
  struct ParameterSlot {
    std::string name;
    tensor_type value;
    // The autograd state the parameter had when it last required grad (kept across freeze, so
    // copies held elsewhere stay tied to it).
    std::shared_ptr<kiln::detail::AutogradMeta<T, Device>> meta;
  };
  struct BufferSlot {
    std::string name;
    tensor_type value;
    bool persistent = true;
  };
  struct ChildSlot {
    std::string name;
    module_ptr module;
  };

  static std::string join(const std::string& prefix, const std::string& name) {
    return prefix.empty() ? name : prefix + "." + name;
  }

  void check_new_name(const char* op, const std::string& name) const {
    const std::string where = std::string("nn::Module::") + op;
    if (name.empty()) throw_value_error(where.c_str(), "the name is empty");
    if (name.find('.') != std::string::npos)
      throw_value_error(where.c_str(), "the name '" + name + "' contains '.' (dots separate the names of nested modules)");
    for (const auto& p : parameters_)
      if (p.name == name) throw_value_error(where.c_str(), "'" + name + "' is already a parameter of this module");
    for (const auto& b : buffers_)
      if (b.name == name) throw_value_error(where.c_str(), "'" + name + "' is already a buffer of this module");
    for (const auto& c : children_)
      if (c.name == name) throw_value_error(where.c_str(), "'" + name + "' is already a child module of this module");
  }

  // Visits (dotted prefix, module) for this module and its descendants, depth first, each module
  // once (recurse = false: this module only).
  template <class Self, class F>
  static void walk_unique(Self& self, bool recurse, F&& f) {
    std::unordered_set<const BasicModule*> seen;
    walk_unique_from(self, std::string(), recurse, f, seen);
  }
  template <class Self, class F>
  static void walk_unique_from(Self& m, const std::string& prefix, bool recurse, F& f,
                               std::unordered_set<const BasicModule*>& seen) {
    if (!seen.insert(&m).second) return;
    f(prefix, m);
    if (!recurse) return;
    for (const auto& c : m.children_) {
      using Child = std::conditional_t<std::is_const_v<Self>, const BasicModule, BasicModule>;
      Child& child = *c.module;
      walk_unique_from(child, join(prefix, c.name), true, f, seen);
    }
  }
  // Visits every (prefix, module) path, shared modules under each of their names (state dicts).
  template <class Self, class F>
  static void walk_all(Self& m, const std::string& prefix, F&& f) {
    f(prefix, m);
    for (const auto& c : m.children_) {
      using Child = std::conditional_t<std::is_const_v<Self>, const BasicModule, BasicModule>;
      Child& child = *c.module;
      walk_all(child, join(prefix, c.name), f);
    }
  }

  // Visits each distinct parameter slot once with its dotted name. Two slots holding the same
  // parameter (tied weights) share their autograd state; the first one wins.
  template <class F>
  void for_each_parameter_slot(bool recurse, F&& f) const {
    std::unordered_set<const void*> seen;
    walk_unique(*this, recurse, [&](const std::string& prefix, const BasicModule& m) {
      for (const auto& p : m.parameters_) {
        const void* key = p.meta ? static_cast<const void*>(p.meta.get()) : static_cast<const void*>(&p);
        if (seen.insert(key).second) f(join(prefix, p.name), p);
      }
    });
  }

  std::size_t set_trainable(const char* op, const std::string& prefix, bool on) {
    std::size_t matched = 0, changed = 0;
    std::vector<std::string> names;
    walk_unique(*this, true, [&](const std::string& mod_prefix, BasicModule& m) {
      for (auto& p : m.parameters_) {
        const std::string name = join(mod_prefix, p.name);
        names.push_back(name);
        const bool match = prefix.empty() || name == prefix ||
                           (name.size() > prefix.size() && name.compare(0, prefix.size(), prefix) == 0 &&
                            name[prefix.size()] == '.');
        if (!match) continue;
        ++matched;
        if (on == p.value.tracks_grad()) continue;
        ++changed;
        if (on) {
          if (p.meta)
            p.value.set_autograd_meta(p.meta);
          else
            p.meta = p.value.requires_grad().autograd_meta();
        } else {
          p.value.zero_grad();
          p.value.set_autograd_meta(nullptr);
        }
      }
    });
    if (matched == 0 && !prefix.empty()) {
      std::string known = names.empty() ? "none" : "";
      for (std::size_t i = 0; i < names.size() && i < 12; ++i) known += (i ? ", " : "") + names[i];
      if (names.size() > 12) known += ", ...";
      throw_value_error((std::string("nn::Module::") + op).c_str(),
                        "no parameter is named '" + prefix + "' or lies under it (parameters: " + known + ")");
    }
    return changed;
  }

  // The module owning the last component of `dotted_name`, and that component.
  template <class Self>
  static std::pair<Self*, std::string> resolve(Self& self, const char* what, const std::string& dotted_name) {
    Self* m = &self;
    std::size_t start = 0;
    for (;;) {
      const std::size_t dot = dotted_name.find('.', start);
      if (dot == std::string::npos) return {m, dotted_name.substr(start)};
      const std::string part = dotted_name.substr(start, dot - start);
      Self* next = nullptr;
      for (const auto& c : m->children_)
        if (c.name == part) next = c.module.get();
      if (!next)
        throw_value_error((std::string("nn::Module::") + what).c_str(),
                          "no " + std::string(what) + " is named '" + dotted_name + "' (no child module '" +
                              dotted_name.substr(0, dot) + "')");
      m = next;
      start = dot + 1;
    }
  }

  std::deque<ParameterSlot> parameters_;
  std::deque<BufferSlot> buffers_;
  std::vector<ChildSlot> children_;
  bool training_ = true;
};

// The module base for float tensors on the CPU.
using Module = BasicModule<float, cpu>;

// Freezes a module's trainable parameters for the guard's lifetime and then unfreezes exactly
// those (e.g. the discriminator during a generator step): `nn::FrozenParameters<T, D> guard(d);`.
template <class T, class Device = cpu>
struct FrozenParameters {
  explicit FrozenParameters(BasicModule<T, Device>& m) : module(m) {
    for (const auto& [name, p] : module.named_parameters())
      if (p.tracks_grad()) names.push_back(name);
    for (const auto& name : names) module.freeze(name);
  }
  ~FrozenParameters() {
    for (const auto& name : names) module.unfreeze(name);
  }
  FrozenParameters(const FrozenParameters&) = delete;
  FrozenParameters& operator=(const FrozenParameters&) = delete;
  BasicModule<T, Device>& module;
  std::vector<std::string> names;
};

}  // namespace kiln::nn
