// kiln/autograd/graph.hpp — reverse-mode automatic differentiation: the tape (nodes recorded by
// operations on tracked tensors), backward() and grad() with gradient accumulation, retain_graph
// and create_graph, NoGrad/EnableGrad scopes, and the gradients of views and broadcasts.
// Builds on core/tensor.hpp and expr/reduce.hpp (sums that undo broadcasting).
#pragma once

#include <kiln/core/tensor.hpp>
#include <kiln/expr/ops.hpp>
#include <kiln/expr/reduce.hpp>

#include <algorithm>
#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

namespace kiln {

// Inside a NoGrad scope nothing is recorded for backward (as torch.no_grad()).
class NoGrad {
 public:
  NoGrad() : previous_(detail::grad_mode_flag()) { detail::grad_mode_flag() = false; }
  ~NoGrad() { detail::grad_mode_flag() = previous_; }
  NoGrad(const NoGrad&) = delete;
  NoGrad& operator=(const NoGrad&) = delete;

 private:
  bool previous_;
};

// Turns recording back on inside a NoGrad scope (as torch.enable_grad()).
class EnableGrad {
 public:
  explicit EnableGrad(bool on = true) : previous_(detail::grad_mode_flag()) { detail::grad_mode_flag() = on; }
  ~EnableGrad() { detail::grad_mode_flag() = previous_; }
  EnableGrad(const EnableGrad&) = delete;
  EnableGrad& operator=(const EnableGrad&) = delete;

 private:
  bool previous_;
};

// True while operations on tracked tensors are recorded.
inline bool is_grad_enabled() { return detail::grad_mode_enabled(); }

namespace detail {

template <class T, class Device>
struct Node;

template <class T, class Device>
struct AutogradMeta {
  Shape shape;                                 // of the tensor this state belongs to
  std::shared_ptr<Node<T, Device>> grad_fn;   // the operation that made it; null for leaves
  Tensor<T, Device> grad;                      // accumulated gradient (leaves, or retain_grad)
  bool retain = false;                         // keep the gradient of a non-leaf
};

// One recorded operation: the autograd state of each input (null where the input needs no
// gradient) and the backward function from the output's gradient to the inputs'.
template <class T, class Device>
struct Node {
  std::vector<std::shared_ptr<AutogradMeta<T, Device>>> inputs;
  virtual ~Node() = default;
  virtual const char* name() const = 0;
  // Gradients with respect to each input (undefined where none flows).
  virtual std::vector<Tensor<T, Device>> apply(const Tensor<T, Device>& grad_out) = 0;
  // Drops what the backward function saved (after a backward without retain_graph).
  virtual void release() = 0;
  bool needs(std::size_t i) const { return i < inputs.size() && inputs[i] != nullptr; }
};

template <class T, class Device, class F>
struct LambdaNode final : Node<T, Device> {
  const char* label;
  std::optional<F> fn;
  LambdaNode(const char* l, F f) : label(l), fn(std::move(f)) {}
  const char* name() const override { return label; }
  std::vector<Tensor<T, Device>> apply(const Tensor<T, Device>& g) override {
    if (!fn)
      throw Error(std::string("kiln::backward: the graph through '") + label +
                  "' was already freed by an earlier backward(); call backward(retain_graph = true) the first "
                  "time to go through it twice");
    return (*fn)(g, static_cast<const Node<T, Device>&>(*this));
  }
  void release() override { fn.reset(); }
};

// Records `out` = op(inputs) with `backward(grad_out, node) -> grads per input` when recording is
// on and some input is tracked. `out` becomes a tracked non-leaf.
template <class T, class Device, class F>
void record(const char* name, Tensor<T, Device>& out, std::initializer_list<Tensor<T, Device>> inputs,
            F backward) {
  if (!grad_mode_enabled()) return;
  bool any = false;
  for (const auto& t : inputs) any = any || t.tracks_grad();
  if (!any) return;
  auto node = std::make_shared<LambdaNode<T, Device, F>>(name, std::move(backward));
  node->inputs.reserve(inputs.size());
  for (const auto& t : inputs) node->inputs.push_back(t.autograd_meta());
  auto meta = std::make_shared<AutogradMeta<T, Device>>();
  meta->shape = out.shape();
  meta->grad_fn = std::move(node);
  out.set_autograd_meta(std::move(meta));
}

// The same, for a node whose inputs come as a vector (concat, stack, fused expressions).
template <class T, class Device, class F>
void record_many(const char* name, Tensor<T, Device>& out, const std::vector<Tensor<T, Device>>& inputs,
                 F backward) {
  if (!grad_mode_enabled()) return;
  bool any = false;
  for (const auto& t : inputs) any = any || t.tracks_grad();
  if (!any) return;
  auto node = std::make_shared<LambdaNode<T, Device, F>>(name, std::move(backward));
  node->inputs.reserve(inputs.size());
  for (const auto& t : inputs) node->inputs.push_back(t.autograd_meta());
  auto meta = std::make_shared<AutogradMeta<T, Device>>();
  meta->shape = out.shape();
  meta->grad_fn = std::move(node);
  out.set_autograd_meta(std::move(meta));
}

// Sum of `x` over the dims that broadcasting stretched, giving a tensor of `shape` (which must
// broadcast to x's shape). Raw: records nothing.
template <class T, class D>
Tensor<T, D> sum_to_raw(const Tensor<T, D>& x, const Shape& shape) {
  if (x.shape() == shape) return x.detach();
  if (!broadcastable_to(shape, x.shape()))
    throw_shape_error("sum_to", "the target shape does not broadcast to the tensor's", x.shape(), shape);
  NoGrad guard;
  Tensor<T, D> r = x.detach();
  const int lead = x.dim() - shape.ndim;
  // Leading dims collapse into one, summed at once.
  if (lead > 0) {
    Shape rest;
    for (int i = lead; i < x.dim(); ++i) rest.push_back(x.shape().dims[i]);
    Shape two{-1, rest.numel()};
    r = reduce_axis("sum", Reduction::sum, r.reshape(two), 0, false).reshape(rest);
  }
  for (int i = 0; i < shape.ndim; ++i)
    if (shape.dims[i] == 1 && r.shape().dims[i] != 1) r = reduce_axis("sum", Reduction::sum, r, i, true);
  return r.reshape(shape);
}

}  // namespace detail

// Sum of `x` down to `shape` (the inverse of broadcasting `shape` up to x's shape); tracked.
template <class T, class D>
Tensor<T, D> sum_to(const Tensor<T, D>& x, const Shape& shape) {
  if (x.shape() == shape) return x;
  Tensor<T, D> out = detail::sum_to_raw(x, shape);
  const Shape from = x.shape();
  detail::record("sum_to", out, {x}, [from](const Tensor<T, D>& g, const auto&) {
    return std::vector<Tensor<T, D>>{g.expand(from)};
  });
  return out;
}

namespace detail {

// Scatters `g` into zeros of `shape` at the positions the view `remake` selects (the gradient of
// a view); tracked, its own gradient being the view again.
template <class T, class D, class F>
Tensor<T, D> embed_view(const Tensor<T, D>& g, const Shape& shape, F remake) {
  Tensor<T, D> out(shape);
  {
    NoGrad guard;
    Tensor<T, D> target = remake(out);
    target.assign(g.detach());
  }
  record("view_backward", out, {g}, [remake](const Tensor<T, D>& gg, const auto&) {
    return std::vector<Tensor<T, D>>{remake(gg)};
  });
  return out;
}

template <class T, class Device, class F>
void track_view(const Tensor<T, Device>& in, Tensor<T, Device>& out, F remake, bool reshape_like) {
  const Shape from = in.shape();
  if (reshape_like) {
    record("view", out, {in}, [from](const Tensor<T, Device>& g, const auto&) {
      return std::vector<Tensor<T, Device>>{g.reshape(from)};
    });
  } else {
    record("view", out, {in}, [from, remake](const Tensor<T, Device>& g, const auto&) {
      return std::vector<Tensor<T, Device>>{embed_view(g, from, remake)};
    });
  }
}

template <class T, class Device>
void track_expand(const Tensor<T, Device>& in, Tensor<T, Device>& out) {
  const Shape from = in.shape();
  record("expand", out, {in}, [from](const Tensor<T, Device>& g, const auto&) {
    return std::vector<Tensor<T, Device>>{sum_to(g, from)};
  });
}

// The backward pass: from `roots` with gradients `seeds`, through every recorded node, into the
// leaves' grad() — or, when `capture` is given, into capture[meta] for the requested tensors only.
template <class T, class D>
void run_backward(const std::vector<Tensor<T, D>>& roots, const std::vector<Tensor<T, D>>& seeds, bool retain_graph,
                  bool create_graph,
                  std::unordered_map<const AutogradMeta<T, D>*, Tensor<T, D>>* capture = nullptr,
                  std::unordered_set<const AutogradMeta<T, D>*>* reached = nullptr) {
  using Meta = AutogradMeta<T, D>;
  using N = Node<T, D>;
  EnableGrad mode(create_graph);

  // Every node reachable from the roots and, for each, how many edges lead into it.
  std::unordered_map<N*, int> pending;
  std::vector<N*> stack;
  for (const auto& r : roots)
    if (r.autograd_meta() && r.autograd_meta()->grad_fn) {
      N* n = r.autograd_meta()->grad_fn.get();
      if (pending.emplace(n, 0).second) stack.push_back(n);
    }
  while (!stack.empty()) {
    N* n = stack.back();
    stack.pop_back();
    for (const auto& in : n->inputs)
      if (in && in->grad_fn) {
        N* m = in->grad_fn.get();
        auto [it, inserted] = pending.emplace(m, 0);
        ++it->second;
        if (inserted) stack.push_back(m);
      }
  }

  auto add = [](Tensor<T, D>& acc, const Tensor<T, D>& g) {
    if (!acc.defined())
      acc = g;
    else
      acc = Tensor<T, D>(acc + g);
  };
  std::unordered_map<N*, Tensor<T, D>> grads;
  auto deliver = [&](const std::shared_ptr<Meta>& meta, const Tensor<T, D>& g) {
    if (!g.defined()) {
      // Reached through an op with no gradient for it (a comparison): a zero gradient, as PyTorch.
      if (capture && capture->count(meta.get()) && reached) reached->insert(meta.get());
      return;
    }
    if (capture && reached) reached->insert(meta.get());
    if (g.shape() != meta->shape)
      throw_shape_error("backward", "a gradient does not have the shape of its tensor", g.shape(), meta->shape);
    if (capture) {
      auto it = capture->find(meta.get());
      if (it != capture->end()) add(it->second, g);
    } else if (!meta->grad_fn || meta->retain) {
      // A gradient may share storage with another tensor (a view of the seed, or the same tensor
      // handed to several inputs): grad() gets storage of its own, so in-place edits of it
      // (clipping) touch nothing else.
      if (!meta->grad.defined())
        meta->grad = create_graph ? g.contiguous() : g.detach().clone();
      else
        meta->grad = create_graph ? Tensor<T, D>(meta->grad + g) : Tensor<T, D>(meta->grad.detach() + g.detach());
    }
    if (meta->grad_fn) add(grads[meta->grad_fn.get()], g);
  };
  for (std::size_t i = 0; i < roots.size(); ++i) {
    const auto& meta = roots[i].autograd_meta();
    if (!meta)
      throw Error("kiln::backward: the tensor does not require grad and has no recorded operation (call "
                  ".requires_grad() on an input, and do not compute it inside kiln::NoGrad)");
    deliver(meta, seeds[i]);
  }

  std::vector<N*> ready;
  for (const auto& r : roots)
    if (r.autograd_meta() && r.autograd_meta()->grad_fn) {
      N* n = r.autograd_meta()->grad_fn.get();
      if (pending[n] == 0 && std::find(ready.begin(), ready.end(), n) == ready.end()) ready.push_back(n);
    }
  while (!ready.empty()) {
    N* n = ready.back();
    ready.pop_back();
    Tensor<T, D> g;
    if (auto it = grads.find(n); it != grads.end()) {
      g = std::move(it->second);
      grads.erase(it);
    }
    std::vector<Tensor<T, D>> outs;
    if (g.defined()) outs = n->apply(g);
    if (g.defined() && outs.size() != n->inputs.size())
      throw Error(std::string("kiln::backward: '") + n->name() + "' returned the wrong number of gradients");
    for (std::size_t i = 0; i < n->inputs.size(); ++i) {
      const auto& in = n->inputs[i];
      if (!in) continue;
      deliver(in, g.defined() ? outs[i] : Tensor<T, D>());
      if (in->grad_fn) {
        N* m = in->grad_fn.get();
        if (--pending[m] == 0) ready.push_back(m);
      }
    }
    if (!retain_graph) n->release();
  }
}

template <class T, class Device>
struct TensorAutograd {
  using Tn = Tensor<T, Device>;
  static Tn& set_requires_grad(Tn& t, bool on) {
    static_assert(is_floating_element<T>, "kiln: only float and double tensors can require gradients");
    const auto& m = t.autograd_meta();
    if (m && m->grad_fn)
      throw Error("kiln::requires_grad: only leaf tensors can be switched; this tensor is the result of '" +
                  std::string(m->grad_fn->name()) + "' (use .detach().requires_grad() for a new leaf)");
    if (on && !m) {
      auto meta = std::make_shared<AutogradMeta<T, Device>>();
      meta->shape = t.shape();
      t.set_autograd_meta(std::move(meta));
    } else if (!on) {
      t.set_autograd_meta(nullptr);
    }
    return t;
  }
  static bool is_leaf(const Tn& t) { return !t.autograd_meta() || !t.autograd_meta()->grad_fn; }
  static Tn grad(const Tn& t) { return t.autograd_meta() ? t.autograd_meta()->grad : Tn(); }
  static void set_grad(const Tn& t, const Tn& g) {
    if (!t.autograd_meta()) {
      if (!g.defined()) return;
      throw Error("kiln::set_grad: the tensor does not require grad");
    }
    if (g.defined() && g.shape() != t.shape())
      throw_shape_error("set_grad", "the gradient's shape differs from the tensor's", g.shape(), t.shape());
    t.autograd_meta()->grad = g;
  }
  static void retain_grad(const Tn& t) {
    if (!t.autograd_meta()) throw Error("kiln::retain_grad: the tensor does not require grad");
    t.autograd_meta()->retain = true;
  }
  static void backward(const Tn& t, const Tn& gradient, bool retain_graph, bool create_graph) {
    Tn seed = gradient;
    if (!seed.defined()) {
      if (t.numel() != 1)
        throw_shape_error("backward", "backward() without a gradient needs a one-element tensor (pass the "
                                      "gradient of the output explicitly)",
                          t.shape());
      seed = Tn(t.shape());
      seed.fill_(T(1));
    } else if (seed.shape() != t.shape()) {
      throw_shape_error("backward", "the gradient's shape differs from the tensor's", seed.shape(), t.shape());
    }
    run_backward<T, Device>({t}, {seed}, retain_graph || create_graph, create_graph);
  }
};

}  // namespace detail

// Gradients of `outputs` (seeded with `grad_outputs`, ones for one-element outputs when empty)
// with respect to `inputs`, returned instead of accumulated into grad() (torch.autograd.grad).
// With create_graph the result is itself tracked, so it can be differentiated again (gradient
// penalties). An input that the outputs do not depend on gets an undefined tensor, or an error
// unless allow_unused.
template <class T, class D>
std::vector<Tensor<T, D>> grad(const std::vector<Tensor<T, D>>& outputs, const std::vector<Tensor<T, D>>& inputs,
                               std::vector<Tensor<T, D>> grad_outputs = {}, bool retain_graph = false,
                               bool create_graph = false, bool allow_unused = false) {
  if (grad_outputs.empty()) {
    for (const auto& o : outputs) {
      if (o.numel() != 1)
        throw_shape_error("grad", "an output with more than one element needs its grad_output", o.shape());
      Tensor<T, D> one(o.shape());
      one.fill_(T(1));
      grad_outputs.push_back(one);
    }
  }
  if (grad_outputs.size() != outputs.size())
    throw_value_error("grad", "got " + std::to_string(grad_outputs.size()) + " grad_outputs for " +
                                  std::to_string(outputs.size()) + " outputs");
  std::unordered_map<const detail::AutogradMeta<T, D>*, Tensor<T, D>> capture;
  for (const auto& in : inputs) {
    if (!in.autograd_meta()) throw Error("kiln::grad: an input does not require grad");
    capture.emplace(in.autograd_meta().get(), Tensor<T, D>());
  }
  std::unordered_set<const detail::AutogradMeta<T, D>*> reached;
  detail::run_backward<T, D>(outputs, grad_outputs, retain_graph || create_graph, create_graph, &capture, &reached);
  std::vector<Tensor<T, D>> result;
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    Tensor<T, D> g = capture[inputs[i].autograd_meta().get()];
    if (!g.defined() && reached.count(inputs[i].autograd_meta().get())) g = Tensor<T, D>(inputs[i].shape());
    if (!g.defined() && !allow_unused)
      throw Error("kiln::grad: input " + std::to_string(i) +
                  " was not used to compute the outputs (pass allow_unused = true to get an undefined tensor)");
    result.push_back(g);
  }
  return result;
}

}  // namespace kiln
