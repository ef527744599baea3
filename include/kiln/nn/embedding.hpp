// kiln/nn/embedding.hpp — nn::Embedding (nn::BasicEmbedding<T, Device>): a lookup table of
// num_embeddings vectors of embedding_dim, as torch.nn.Embedding with its normal(0, 1) initialisation.
// Builds on nn/module.hpp, nn/init.hpp and kiln::embedding (ops/index.hpp).
#pragma once

#include <kiln/core/error.hpp>
#include <kiln/core/factories.hpp>
#include <kiln/core/philox.hpp>
#include <kiln/core/tensor.hpp>
#include <kiln/nn/init.hpp>
#include <kiln/nn/module.hpp>
#include <kiln/ops/index.hpp>

#include <string>

namespace kiln::nn {

// Parameter "weight" [num_embeddings, embedding_dim], drawn from N(0, 1) with `rng` (as
// torch.nn.Embedding's reset_parameters). forward(ids) looks up the rows of the ids (any shape,
// each in [0, num_embeddings), else IndexError): [ids..., embedding_dim]. The gradient adds into
// the rows that were looked up.
template <class T, class Device = cpu>
class BasicEmbedding : public BasicModule<T, Device> {
 public:
  using tensor_type = Tensor<T, Device>;

  BasicEmbedding(index_t num_embeddings, index_t embedding_dim, Rng& rng)
      : num_embeddings_(num_embeddings), embedding_dim_(embedding_dim) {
    if (num_embeddings < 0 || embedding_dim < 0)
      throw_value_error("nn::Embedding", "num_embeddings and embedding_dim must be >= 0, got " +
                                             std::to_string(num_embeddings) + " and " + std::to_string(embedding_dim));
    weight_ = &this->register_parameter("weight", empty<T, Device>(Shape{num_embeddings, embedding_dim}));
    init::normal_(*weight_, rng, 0.0, 1.0);
  }

  tensor_type forward(const Tensor<index_t, Device>& ids) const { return embedding(*weight_, ids); }
  tensor_type operator()(const Tensor<index_t, Device>& ids) const { return forward(ids); }

  tensor_type weight() const { return *weight_; }
  index_t num_embeddings() const { return num_embeddings_; }
  index_t embedding_dim() const { return embedding_dim_; }

 private:
  index_t num_embeddings_, embedding_dim_;
  tensor_type* weight_ = nullptr;
};

using Embedding = BasicEmbedding<float, cpu>;

}  // namespace kiln::nn
