// kiln/nn/sequential.hpp — nn::Sequential (nn::BasicSequential<T, Device>): modules applied one after the
// other, registered as "0", "1", ... like torch.nn.Sequential. Builds on nn/module.hpp.
#pragma once

#include <kiln/core/error.hpp>
#include <kiln/nn/module.hpp>

#include <concepts>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace kiln::nn {

// A module that maps one tensor to one tensor: derived from BasicModule<T, Device>, with a
// forward(const Tensor&) returning a Tensor.
template <class M, class T, class Device>
concept TensorToTensorModule = std::derived_from<M, BasicModule<T, Device>> &&
                               requires(M& m, const Tensor<T, Device>& x) {
                                 { m.forward(x) } -> std::convertible_to<Tensor<T, Device>>;
                               };

// Holds child modules in order and feeds each one's output to the next. Children are named by
// their position ("0", "1", ...) unless given a name, so parameters read "0.weight", "2.bias".
template <class T, class Device = cpu>
class BasicSequential : public BasicModule<T, Device> {
 public:
  using tensor_type = Tensor<T, Device>;

  BasicSequential() = default;
  // Sequential(std::make_shared<nn::Linear>(4, 8, rng), std::make_shared<nn::ReLU>(), ...)
  template <class... M>
  explicit BasicSequential(std::shared_ptr<M>... modules) {
    (push_back(std::move(modules)), ...);
  }

  // Appends a module named by its position; returns it.
  template <class M>
  std::shared_ptr<M> push_back(std::shared_ptr<M> module) {
    return push_back(std::to_string(layers_.size()), std::move(module));
  }
  // Appends a module under `name` (unique, without dots); returns it.
  template <class M>
  std::shared_ptr<M> push_back(const std::string& name, std::shared_ptr<M> module) {
    static_assert(TensorToTensorModule<M, T, Device>,
                  "kiln::nn::Sequential holds modules derived from nn::BasicModule<T, Device> (same T and Device "
                  "as the Sequential) whose forward(const Tensor&) returns a Tensor");
    this->register_module(name, module);
    M* raw = module.get();
    layers_.push_back(Layer{module, [raw](const tensor_type& x) { return tensor_type(raw->forward(x)); }});
    return module;
  }

  // Applies the modules in order (the input itself when there are none).
  tensor_type forward(const tensor_type& x) {
    tensor_type h = x;
    for (auto& layer : layers_) h = layer.forward(h);
    return h;
  }
  tensor_type operator()(const tensor_type& x) { return forward(x); }

  std::size_t size() const { return layers_.size(); }
  bool empty() const { return layers_.empty(); }
  // The i-th module.
  std::shared_ptr<BasicModule<T, Device>> operator[](std::size_t i) const { return layer(i).module; }
  // The i-th module as an M; throws ValueError when it is not one.
  template <class M>
  std::shared_ptr<M> at(std::size_t i) const {
    auto typed = std::dynamic_pointer_cast<M>(layer(i).module);
    if (!typed)
      throw_value_error("nn::Sequential::at", "module " + std::to_string(i) + " is not of the requested type");
    return typed;
  }

 private:
  struct Layer {
    std::shared_ptr<BasicModule<T, Device>> module;
    std::function<tensor_type(const tensor_type&)> forward;
  };
  const Layer& layer(std::size_t i) const {
    if (i >= layers_.size())
      throw_value_error("nn::Sequential", "index " + std::to_string(i) + " is out of range for " +
                                              std::to_string(layers_.size()) + " modules");
    return layers_[i];
  }

  std::vector<Layer> layers_;
};

using Sequential = BasicSequential<float, cpu>;

}  // namespace kiln::nn
