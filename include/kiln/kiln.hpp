// kiln/kiln.hpp — everything kiln offers on the CPU: tensors, lazy fused expressions,
// automatic differentiation, differentiable ops and losses, nn modules, optimizers, data
// loading and augmentation, text (tokenizers: characters and GPT-2's byte-level BPE, cleaning, the
// fortunes corpus, token datasets), files (gzip, IDX, safetensors, checkpoints, PNG images and plots,
// TensorBoard event files), metrics (AUROC, FID, InceptionV3, Inception Score, BLEU, ROUGE, perplexity, the Fashion-MNIST feature
// network, a metrics logger), and the generative model templates of kiln/models (GAN, VAE, flow,
// diffusion, GPT, semi-supervised GAN).
// Builds on the headers of include/kiln and backends/cpu.
#pragma once

#include <kiln/version.hpp>

#include <kiln/core/bfloat16.hpp>
#include <kiln/core/config.hpp>
#include <kiln/core/device.hpp>
#include <kiln/core/error.hpp>
#include <kiln/core/factories.hpp>
#include <kiln/core/philox.hpp>
#include <kiln/core/print.hpp>
#include <kiln/core/shape.hpp>
#include <kiln/core/tensor.hpp>

#include <kiln/expr/eval.hpp>
#include <kiln/expr/expr.hpp>
#include <kiln/expr/math.hpp>
#include <kiln/expr/ops.hpp>
#include <kiln/expr/reduce.hpp>

#include <kiln/autograd/fused.hpp>
#include <kiln/autograd/graph.hpp>

#include <kiln/ops/attention.hpp>
#include <kiln/ops/conv.hpp>
#include <kiln/ops/dropout.hpp>
#include <kiln/ops/index.hpp>
#include <kiln/ops/linear.hpp>
#include <kiln/ops/loss.hpp>
#include <kiln/ops/matmul.hpp>
#include <kiln/ops/norm.hpp>
#include <kiln/ops/pool.hpp>
#include <kiln/ops/reduce.hpp>
#include <kiln/ops/softmax.hpp>

#include <kiln/nn/nn.hpp>
#include <kiln/optim/optim.hpp>

#include <kiln/data/augment.hpp>
#include <kiln/data/fashion_mnist.hpp>
#include <kiln/data/idx.hpp>
#include <kiln/data/loader.hpp>
#include <kiln/data/text.hpp>
#include <kiln/data/tokenizer.hpp>
#include <kiln/data/unicode.hpp>
#include <kiln/io/checkpoint.hpp>
#include <kiln/io/gzip.hpp>
#include <kiln/io/json.hpp>
#include <kiln/io/plot.hpp>
#include <kiln/io/png.hpp>
#include <kiln/io/png_read.hpp>
#include <kiln/io/progress.hpp>
#include <kiln/io/safetensors.hpp>
#include <kiln/io/tensorboard.hpp>

#include <kiln/metrics/auroc.hpp>
#include <kiln/metrics/bleu.hpp>
#include <kiln/metrics/fashion_features.hpp>
#include <kiln/metrics/fid.hpp>
#include <kiln/metrics/inception.hpp>
#include <kiln/metrics/inception_score.hpp>
#include <kiln/metrics/logger.hpp>
#include <kiln/metrics/perplexity.hpp>
#include <kiln/metrics/porter_stemmer.hpp>
#include <kiln/metrics/rouge.hpp>

#include <kiln/models/diffusion.hpp>
#include <kiln/models/flow.hpp>
#include <kiln/models/gan.hpp>
#include <kiln/models/gpt.hpp>
#include <kiln/models/semisupervised.hpp>
#include <kiln/models/vae.hpp>

#include <kiln/backend/cpu/backend.hpp>
