// Tests of include/kiln/models/flow.hpp: every layer and a whole multi-scale flow are inverted to
// 1e-10 in double, and their logdet is compared with log|det J| of the Jacobian computed by central
// finite differences (determinant by this file's own Gaussian elimination); ActNorm's data-dependent
// initialization, the log|det W| gradient against finite differences, the logit transform's closed
// form, the standard normal density of an identity flow, temperature-0 sampling and the errors;
// W5's RealNVP against PyTorch (tests/torch/realnvp_reference.py): log-densities, gradients, and
// ten Adam steps in lockstep.
#include <doctest/doctest.h>

#include <kiln/autograd/gradcheck.hpp>
#include <kiln/backend/cpu/backend.hpp>
#include <kiln/io/safetensors.hpp>
#include <kiln/models/flow.hpp>
#include <kiln/nn/activation.hpp>
#include <kiln/nn/conv.hpp>
#include <kiln/nn/linear.hpp>
#include <kiln/nn/sequential.hpp>
#include <kiln/optim/adam.hpp>

#include "../support/torch_reference.hpp"

#include <cmath>
#include <filesystem>
#include <functional>
#include <memory>
#include <numbers>
#include <string>
#include <vector>

namespace {

using kiln::index_t;
using kiln::Shape;
using D = kiln::Tensor<double>;
using Layer = kiln::models::FlowLayer<double>;
using Net = kiln::nn::BasicSequential<double>;
using Flow = kiln::models::Flow<double>;

std::shared_ptr<Net> mlp(index_t in, index_t hidden, index_t out, kiln::Rng& rng) {
  return std::make_shared<Net>(std::make_shared<kiln::nn::BasicLinear<double>>(in, hidden, rng),
                               std::make_shared<kiln::nn::BasicTanh<double>>(),
                               std::make_shared<kiln::nn::BasicLinear<double>>(hidden, out, rng));
}
std::shared_ptr<Net> conv_net(index_t in, index_t hidden, index_t out, kiln::Rng& rng) {
  const kiln::nn::Conv2dOptions same{.padding = 1};
  return std::make_shared<Net>(std::make_shared<kiln::nn::BasicConv2d<double>>(in, hidden, 3, same, rng),
                               std::make_shared<kiln::nn::BasicTanh<double>>(),
                               std::make_shared<kiln::nn::BasicConv2d<double>>(hidden, out, 3, same, rng));
}

// log|det A| of a row-major n×n matrix by Gaussian elimination with row pivoting (this test's
// own, independent of the header's LU).
double log_abs_det_by_elimination(std::vector<double> a, index_t n) {
  double log_det = 0;
  for (index_t col = 0; col < n; ++col) {
    index_t best = col;
    for (index_t r = col + 1; r < n; ++r)
      if (std::fabs(a[r * n + col]) > std::fabs(a[best * n + col])) best = r;
    for (index_t c = 0; c < n; ++c) std::swap(a[col * n + c], a[best * n + c]);
    const double p = a[col * n + col];
    REQUIRE(p != 0.0);
    log_det += std::log(std::fabs(p));
    for (index_t r = col + 1; r < n; ++r) {
      const double f = a[r * n + col] / p;
      for (index_t c = col; c < n; ++c) a[r * n + c] -= f * a[col * n + c];
    }
  }
  return log_det;
}

// log|det ∂f(x)_b/∂x_b| for example b of the batch x, by central differences in double; f maps a
// batch to a batch with as many elements per example.
double finite_difference_log_abs_det(const std::function<D(const D&)>& f, const D& x, index_t b, double eps = 1e-6) {
  kiln::NoGrad guard;
  const D base = x.contiguous().clone();
  const index_t n = base.numel() / base.size(0);
  std::vector<double> jac(static_cast<std::size_t>(n * n));
  for (index_t j = 0; j < n; ++j) {
    D up = base.clone(), down = base.clone();
    up.data()[b * n + j] += eps;
    down.data()[b * n + j] -= eps;
    const std::vector<double> fu = f(up).to_vector(), fd = f(down).to_vector();
    REQUIRE(static_cast<index_t>(fu.size()) == base.numel());
    for (index_t i = 0; i < n; ++i) jac[i * n + j] = (fu[b * n + i] - fd[b * n + i]) / (2 * eps);
  }
  return log_abs_det_by_elimination(jac, n);
}

double max_abs_difference(const D& a, const D& b) {
  REQUIRE(a.shape() == b.shape());
  const auto va = a.to_vector(), vb = b.to_vector();
  double m = 0;
  for (std::size_t i = 0; i < va.size(); ++i) m = std::max(m, std::fabs(va[i] - vb[i]));
  return m;
}

// Inverse to 1e-10, and the logdet of each example against the finite-difference Jacobian.
void check_layer(Layer& layer, const D& x) {
  kiln::NoGrad guard;
  auto [y, logdet] = layer.forward(x);
  REQUIRE(logdet.shape() == Shape{x.size(0)});
  CHECK(max_abs_difference(layer.inverse(y), x) < 1e-10);
  const auto ld = logdet.to_vector();
  const auto f = [&](const D& in) { return layer.forward(in).first; };
  for (index_t b = 0; b < x.size(0); ++b) CHECK(ld[b] == doctest::Approx(finite_difference_log_abs_det(f, x, b)).epsilon(1e-7));
}

D random_batch(const Shape& shape, std::uint64_t seed, double scale = 1.0) {
  kiln::Rng rng(seed);
  return D(kiln::randn<double>(shape, rng) * scale);
}

}  // namespace

TEST_CASE("masks: checkerboard, channel halves and flat-index parity") {
  CHECK(kiln::models::checkerboard_mask<double>(1, 2, 3, 0).to_vector() == std::vector<double>{0, 1, 0, 1, 0, 1});
  CHECK(kiln::models::checkerboard_mask<double>(2, 2, 2, 1).to_vector() == std::vector<double>{1, 0, 0, 1, 1, 0, 0, 1});
  CHECK(kiln::models::channel_mask<double>(2, 1, 2, true).to_vector() == std::vector<double>{1, 1, 0, 0});
  CHECK(kiln::models::channel_mask<double>(4, 1, 1, false).to_vector() == std::vector<double>{0, 0, 1, 1});
  // W5 / PyTorch: mask_k[i] = (i + k) % 2.
  CHECK(kiln::models::parity_mask<double>(5, 0).to_vector() == std::vector<double>{0, 1, 0, 1, 0});
  CHECK(kiln::models::parity_mask<double>(5, 1).to_vector() == std::vector<double>{1, 0, 1, 0, 1});
  CHECK_THROWS_AS(kiln::models::parity_mask<double>(1, 0), kiln::ValueError);
}

TEST_CASE("affine coupling on 8-d vectors (two MLPs, tanh on s): the formula, the inverse and the logdet") {
  kiln::Rng rng(7);
  auto s_net = mlp(8, 12, 8, rng), t_net = mlp(8, 12, 8, rng);
  const D mask = kiln::models::parity_mask<double>(8, 1);
  kiln::models::AffineCoupling<double> layer(mask, s_net, t_net, {.tanh = true, .tanh_scale = 1.5});
  const D x = random_batch({3, 8}, 11);
  // By hand: y_i = x_i on the mask, x_i·exp(1.5·tanh(s_i)) + t_i off it, with s, t = nets(m⊙x).
  {
    kiln::NoGrad guard;
    const D xm(x * mask);
    const auto s = s_net->forward(xm).to_vector(), t = t_net->forward(xm).to_vector();
    const auto xv = x.to_vector(), mv = mask.to_vector();
    auto [y, ld] = layer.forward(x);
    const auto yv = y.to_vector(), ldv = ld.to_vector();
    for (index_t b = 0; b < 3; ++b) {
      double logdet = 0;
      for (index_t i = 0; i < 8; ++i) {
        const index_t k = b * 8 + i;
        const double sk = 1.5 * std::tanh(s[k]);
        const double want = mv[i] == 1 ? xv[k] : xv[k] * std::exp(sk) + t[k];
        CHECK(yv[k] == doctest::Approx(want).epsilon(1e-13));
        if (mv[i] == 0) logdet += sk;
      }
      CHECK(ldv[b] == doctest::Approx(logdet).epsilon(1e-13));
    }
  }
  check_layer(layer, x);
  // Without tanh too.
  kiln::models::AffineCoupling<double> plain(kiln::models::parity_mask<double>(8, 0), mlp(8, 12, 8, rng), mlp(8, 12, 8, rng));
  check_layer(plain, x);
  // The state dict names the networks as W5's PyTorch module does.
  const auto keys = layer.state_dict().keys();
  CHECK(keys.front() == "mask");
  CHECK(std::find(keys.begin(), keys.end(), "s_net.0.weight") != keys.end());
  CHECK(std::find(keys.begin(), keys.end(), "t_net.2.bias") != keys.end());
}

TEST_CASE("affine coupling on 1x4x4 images with one conv net (checkerboard mask; s and t halves)") {
  kiln::Rng rng(3);
  kiln::models::AffineCoupling<double> layer(kiln::models::checkerboard_mask<double>(1, 4, 4, 0), conv_net(1, 4, 2, rng));
  check_layer(layer, random_batch({2, 1, 4, 4}, 5));
  kiln::models::AffineCoupling<double> channels(kiln::models::channel_mask<double>(2, 2, 2, false), conv_net(2, 3, 4, rng),
                                                {.tanh = true, .tanh_scale = 2.0});
  check_layer(channels, random_batch({2, 2, 2, 2}, 6));
}

TEST_CASE("affine coupling: gradients reach the networks and match finite differences of the NLL") {
  kiln::Rng rng(9);
  auto s_net = mlp(4, 5, 4, rng), t_net = mlp(4, 5, 4, rng);
  auto layer = std::make_shared<kiln::models::AffineCoupling<double>>(kiln::models::parity_mask<double>(4, 0), s_net, t_net,
                                                                      kiln::models::AffineCouplingOptions{.tanh = true});
  Flow flow(Shape{4});
  flow.add(layer);
  const D x = random_batch({3, 4}, 2);
  D w = s_net->at<kiln::nn::BasicLinear<double>>(0)->weight();
  kiln::sum(flow.log_prob(x)).backward();
  const auto analytic = w.grad().to_vector();
  kiln::NoGrad guard;
  const double eps = 1e-6;
  for (index_t i = 0; i < w.numel(); i += 3) {
    const double saved = w.data()[i];
    w.data()[i] = saved + eps;
    const double up = kiln::sum(flow.log_prob(x)).item();
    w.data()[i] = saved - eps;
    const double down = kiln::sum(flow.log_prob(x)).item();
    w.data()[i] = saved;
    CHECK(analytic[i] == doctest::Approx((up - down) / (2 * eps)).epsilon(1e-6));
  }
}

TEST_CASE("ActNorm: the data-dependent init gives zero mean and unit variance per channel; inverse and logdet") {
  kiln::models::ActNorm<double> layer(3);
  CHECK_FALSE(layer.initialized());
  // Channels with different means and spreads.
  D x = random_batch({4, 3, 2, 2}, 21);
  {
    kiln::NoGrad guard;
    for (index_t i = 0; i < x.numel(); ++i) {
      const index_t c = (i / 4) % 3;
      x.data()[i] = x.data()[i] * (0.5 + c) + 2.0 * c - 1.0;
    }
  }
  auto [y, ld] = layer.forward(x);
  CHECK(layer.initialized());
  const auto yv = y.to_vector();
  for (index_t c = 0; c < 3; ++c) {
    double mean = 0, sq = 0;
    for (index_t b = 0; b < 4; ++b)
      for (index_t p = 0; p < 4; ++p) mean += yv[(b * 3 + c) * 4 + p];
    mean /= 16;
    for (index_t b = 0; b < 4; ++b)
      for (index_t p = 0; p < 4; ++p) sq += (yv[(b * 3 + c) * 4 + p] - mean) * (yv[(b * 3 + c) * 4 + p] - mean);
    CHECK(mean == doctest::Approx(0.0).scale(1.0).epsilon(1e-12));
    CHECK(sq / 16 == doctest::Approx(1.0).epsilon(1e-5));
  }
  // logdet = H·W·Σ log|s|, and the brute-force Jacobian agrees; a second batch does not re-initialize.
  const auto s = layer.scale().to_vector();
  CHECK(ld.to_vector()[0] == doctest::Approx(4 * (std::log(s[0]) + std::log(s[1]) + std::log(s[2]))).epsilon(1e-12));
  check_layer(layer, random_batch({2, 3, 2, 2}, 22));
  CHECK(layer.scale().to_vector() == s);
  // On vectors [B, C] (H·W = 1) with a negative scale.
  kiln::models::ActNorm<double> vec(4, {.data_init = false});
  {
    kiln::NoGrad guard;
    vec.scale().data()[1] = -0.7;
    vec.bias().data()[2] = 0.3;
  }
  check_layer(vec, random_batch({2, 4}, 23));
}

TEST_CASE("InvertibleConv1x1: a rotation at init; inverse and logdet = HW log|det W| against the Jacobian") {
  kiln::Rng rng(4);
  kiln::models::InvertibleConv1x1<double> layer(3, rng);
  const auto w = layer.weight().to_vector();
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) {
      double dot = 0;  // (WᵀW)_ij
      for (int k = 0; k < 3; ++k) dot += w[k * 3 + i] * w[k * 3 + j];
      CHECK(dot == doctest::Approx(i == j ? 1.0 : 0.0).scale(1.0).epsilon(1e-12));
    }
  check_layer(layer, random_batch({2, 3, 2, 2}, 31));
  // A general (non-orthogonal) weight.
  {
    kiln::NoGrad guard;
    const std::vector<double> v = {1.5, 0.3, -0.2, 0.7, -0.9, 0.4, 0.1, 0.8, 2.0};
    for (int i = 0; i < 9; ++i) layer.weight().data()[i] = v[i];
  }
  auto [y, ld] = layer.forward(random_batch({2, 3, 2, 2}, 32));
  const double det = 1.5 * (-0.9 * 2.0 - 0.4 * 0.8) - 0.3 * (0.7 * 2.0 - 0.4 * 0.1) + (-0.2) * (0.7 * 0.8 + 0.9 * 0.1);
  CHECK(ld.to_vector()[1] == doctest::Approx(4 * std::log(std::fabs(det))).epsilon(1e-12));
  check_layer(layer, random_batch({2, 3, 2, 2}, 33));
  check_layer(layer, random_batch({2, 3}, 34));  // vectors: y = W x
}

TEST_CASE("log_abs_det: value by cofactors, gradient W^-T against finite differences, singular matrices") {
  const D w = kiln::from_vector<double>({0.0, 2.0, 1.0, 3.0, -1.0, 0.5, 1.0, 1.0, 4.0}, {3, 3});  // needs pivoting
  const double det = 0.0 * (-4.0 - 0.5) - 2.0 * (12.0 - 0.5) + 1.0 * (3.0 + 1.0);
  CHECK(kiln::models::log_abs_det(w).item() == doctest::Approx(std::log(std::fabs(det))).epsilon(1e-14));
  const D g = random_batch({5, 5}, 41);
  const auto r = kiln::gradcheck([](const std::vector<D>& in) { return kiln::models::log_abs_det(in[0]); }, {g});
  CHECK_MESSAGE(r.ok, r.message);
  CHECK_THROWS_AS(kiln::models::log_abs_det(kiln::from_vector<double>({1, 2, 2, 4}, {2, 2})), kiln::ValueError);
  CHECK_THROWS_AS(kiln::models::log_abs_det(kiln::from_vector<double>({1, 2, 3}, {1, 3})), kiln::ShapeError);
}

TEST_CASE("InvertibleConv1x1: the gradient of its logdet with respect to the weight matches finite differences") {
  kiln::Rng rng(5);
  kiln::models::InvertibleConv1x1<double> layer(4, rng);
  {
    kiln::NoGrad guard;
    for (index_t i = 0; i < 16; ++i) layer.weight().data()[i] += 0.3 * std::sin(1.0 + i);
  }
  const D x = random_batch({2, 4, 3, 2}, 51);
  D w = layer.weight();
  kiln::sum(layer.forward(x).second).backward();
  const auto analytic = w.grad().to_vector();
  kiln::NoGrad guard;
  const double eps = 1e-6;
  for (index_t i = 0; i < 16; ++i) {
    const double saved = w.data()[i];
    w.data()[i] = saved + eps;
    const double up = kiln::sum(layer.forward(x).second).item();
    w.data()[i] = saved - eps;
    const double down = kiln::sum(layer.forward(x).second).item();
    w.data()[i] = saved;
    CHECK(analytic[i] == doctest::Approx((up - down) / (2 * eps)).epsilon(1e-7));
  }
}

TEST_CASE("Squeeze: each 2x2 block becomes four channels; inverse; logdet 0; odd sizes are errors") {
  kiln::models::Squeeze<double> sq;
  std::vector<double> v(2 * 4 * 4);
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = static_cast<double>(i);
  const D x = kiln::from_vector<double>(v, {1, 2, 4, 4});
  auto [y, ld] = sq.forward(x);
  REQUIRE(y.shape() == Shape{1, 8, 2, 2});
  // y[4c + 2i + j, h, w] = x[c, 2h + i, 2w + j]
  for (index_t c = 0; c < 2; ++c)
    for (index_t i = 0; i < 2; ++i)
      for (index_t j = 0; j < 2; ++j)
        for (index_t h = 0; h < 2; ++h)
          for (index_t w = 0; w < 2; ++w) CHECK(y.at({0, 4 * c + 2 * i + j, h, w}) == x.at({0, c, 2 * h + i, 2 * w + j}));
  CHECK(ld.to_vector() == std::vector<double>{0.0});
  check_layer(sq, random_batch({2, 1, 4, 4}, 61));
  CHECK_THROWS_AS(sq.forward(random_batch({1, 1, 3, 4}, 1)), kiln::ShapeError);
  CHECK_THROWS_AS(sq.output_shape(Shape{1, 4, 5}), kiln::ShapeError);
  Flow flow(Shape{1, 6, 6});
  flow.add(std::make_shared<kiln::models::Squeeze<double>>());  // 6x6 -> 3x3
  CHECK_THROWS_AS(flow.add(std::make_shared<kiln::models::Squeeze<double>>()), kiln::ShapeError);
}

TEST_CASE("logit transform: the closed-form logdet, the inverse, and the Jacobian") {
  const double alpha = 0.05;
  kiln::models::LogitTransform<double> layer(alpha);
  const std::vector<double> xs = {0.0, 0.1, 0.5, 0.99, 0.3, 0.75};
  const D x = kiln::from_vector<double>(xs, {2, 3});
  auto [y, ld] = layer.forward(x);
  const auto yv = y.to_vector(), ldv = ld.to_vector();
  for (int b = 0; b < 2; ++b) {
    double want = 0;
    for (int i = 0; i < 3; ++i) {
      const double s = alpha + (1 - 2 * alpha) * xs[b * 3 + i];
      CHECK(yv[b * 3 + i] == doctest::Approx(std::log(s / (1 - s))).epsilon(1e-13));
      want += std::log((1 - 2 * alpha) / (s * (1 - s)));
    }
    CHECK(ldv[b] == doctest::Approx(want).epsilon(1e-13));
  }
  check_layer(layer, x);
  CHECK_THROWS_AS(kiln::models::LogitTransform<double>(0.5), kiln::ValueError);
}

TEST_CASE("dequantize: (v + u) / 256 lies in v's cell") {
  kiln::Rng rng(8);
  const D pixels = kiln::from_vector<double>({0, 17, 128, 255}, {1, 4});
  const auto x = kiln::models::dequantize(pixels, rng).to_vector();
  const std::vector<double> v = {0, 17, 128, 255};
  for (int i = 0; i < 4; ++i) {
    CHECK(x[i] >= v[i] / 256);
    CHECK(x[i] < (v[i] + 1) / 256);
  }
}

TEST_CASE("a multi-scale flow: exact inverse, logdet against the Jacobian, latent shapes") {
  kiln::Rng rng(12);
  Flow flow(Shape{1, 4, 4}, std::make_shared<kiln::models::LogitTransform<double>>(0.05));
  flow.add(std::make_shared<kiln::models::ActNorm<double>>(1))
      .add(std::make_shared<kiln::models::AffineCoupling<double>>(kiln::models::checkerboard_mask<double>(1, 4, 4, 1),
                                                                  conv_net(1, 4, 2, rng),
                                                                  kiln::models::AffineCouplingOptions{.tanh = true}))
      .add(std::make_shared<kiln::models::Squeeze<double>>())
      .add(std::make_shared<kiln::models::ActNorm<double>>(4))
      .add(std::make_shared<kiln::models::InvertibleConv1x1<double>>(4, rng))
      .add(std::make_shared<kiln::models::AffineCoupling<double>>(kiln::models::channel_mask<double>(4, 2, 2, true),
                                                                  conv_net(4, 6, 8, rng)))
      .split()
      .add(std::make_shared<kiln::models::InvertibleConv1x1<double>>(2, rng))
      .add(std::make_shared<kiln::models::AffineCoupling<double>>(kiln::models::channel_mask<double>(2, 2, 2, false),
                                                                  conv_net(2, 3, 4, rng)));
  CHECK(flow.num_levels() == 2);
  CHECK(flow.num_layers() == 8);
  const auto shapes = flow.latent_shapes();
  REQUIRE(shapes.size() == 2);
  CHECK(shapes[0] == Shape{2, 2, 2});
  CHECK(shapes[1] == Shape{2, 2, 2});
  // Data in (0, 1) as the logit transform wants.
  kiln::Rng data(13);
  const D x = kiln::rand<double>({3, 1, 4, 4}, data, 0.02, 0.98);
  flow.forward(x);  // the ActNorms initialize on this batch
  kiln::NoGrad guard;
  auto [z, logdet] = flow.forward(x);
  REQUIRE(z.shape() == Shape{3, 16});
  CHECK(max_abs_difference(flow.inverse(z), x) < 1e-10);
  const auto enc = flow.encode(x);
  CHECK(max_abs_difference(flow.decode(enc.latents), x) < 1e-10);
  const auto ld = logdet.to_vector();
  const auto f = [&](const D& in) { return flow.forward(in).first; };
  for (index_t b = 0; b < 3; ++b) CHECK(ld[b] == doctest::Approx(finite_difference_log_abs_det(f, x, b)).epsilon(1e-7));
  // log p(x) = log N(z; 0, I) + logdet, and bits/dim from it.
  const auto zv = z.to_vector(), lp = flow.log_prob(x).to_vector(), bpd = flow.bits_per_dim(x).to_vector();
  for (index_t b = 0; b < 3; ++b) {
    double log_normal = 0;
    for (index_t i = 0; i < 16; ++i) log_normal += -0.5 * zv[b * 16 + i] * zv[b * 16 + i] - 0.5 * std::log(2 * std::numbers::pi);
    CHECK(lp[b] == doctest::Approx(log_normal + ld[b]).epsilon(1e-12));
    CHECK(bpd[b] == doctest::Approx((-lp[b] + 16 * std::log(256.0)) / (16 * std::log(2.0))).epsilon(1e-12));
  }
}

TEST_CASE("a flow of identity layers: log_prob is the standard normal density; temperature 0 samples inverse(0)") {
  kiln::Rng rng(14);
  auto zero_net = conv_net(4, 3, 8, rng);
  {
    kiln::NoGrad guard;
    for (auto& p : zero_net->parameters()) p.fill_(0.0);
  }
  auto conv = std::make_shared<kiln::models::InvertibleConv1x1<double>>(4, rng);
  {
    kiln::NoGrad guard;
    for (index_t i = 0; i < 16; ++i) conv->weight().data()[i] = i % 5 == 0 ? 1.0 : 0.0;
  }
  Flow flow(Shape{1, 4, 4});
  flow.add(std::make_shared<kiln::models::Squeeze<double>>())
      .add(std::make_shared<kiln::models::ActNorm<double>>(4, kiln::models::ActNormOptions{.data_init = false}))
      .add(conv)
      .add(std::make_shared<kiln::models::AffineCoupling<double>>(kiln::models::channel_mask<double>(4, 2, 2), zero_net))
      .split();
  const D x = random_batch({2, 1, 4, 4}, 15, 1.3);
  const auto xv = x.to_vector(), lp = flow.log_prob(x).to_vector();
  for (index_t b = 0; b < 2; ++b) {
    double want = 0;
    for (index_t i = 0; i < 16; ++i) want += -0.5 * xv[b * 16 + i] * xv[b * 16 + i] - 0.5 * std::log(2 * std::numbers::pi);
    CHECK(lp[b] == doctest::Approx(want).epsilon(1e-13));
  }
  kiln::Rng sample_rng(16);
  const D at_zero = flow.sample(3, sample_rng, 0.0);
  CHECK(max_abs_difference(at_zero, flow.inverse(kiln::zeros<double>({3, 16}))) == 0.0);
  CHECK(max_abs_difference(at_zero, kiln::zeros<double>({3, 1, 4, 4})) == 0.0);
}

TEST_CASE("sampling at temperature T inverts T times the standard normal draw") {
  kiln::Rng rng(17);
  Flow flow(Shape{6});
  flow.add(std::make_shared<kiln::models::AffineCoupling<double>>(kiln::models::parity_mask<double>(6, 0), mlp(6, 8, 6, rng),
                                                                  mlp(6, 8, 6, rng)))
      .add(std::make_shared<kiln::models::InvertibleConv1x1<double>>(6, rng));
  kiln::Rng a(99), b(99);
  const D s = flow.sample(4, a, 0.7);
  const D z(kiln::randn<double>({4, 6}, b) * 0.7);
  CHECK(max_abs_difference(s, flow.inverse(z)) == 0.0);
  CHECK(max_abs_difference(flow.forward(s).first, z) < 1e-10);
  CHECK_THROWS_AS(flow.sample(2, a, -1.0), kiln::ValueError);
}

TEST_CASE("errors name the problem: mask shapes, non-binary masks, network outputs, odd splits, input shapes") {
  kiln::Rng rng(18);
  kiln::models::AffineCoupling<double> layer(kiln::models::parity_mask<double>(8, 0), mlp(8, 4, 8, rng), mlp(8, 4, 8, rng));
  CHECK_THROWS_WITH_AS(layer.forward(random_batch({2, 6}, 1)), doctest::Contains("mask"), kiln::ShapeError);
  CHECK_THROWS_AS(layer.inverse(random_batch({2, 4, 2}, 1)), kiln::ShapeError);
  CHECK_THROWS_AS(kiln::models::AffineCoupling<double>(kiln::from_vector<double>({0, 0.5}, {2}), mlp(2, 4, 2, rng), mlp(2, 4, 2, rng)),
                  kiln::ValueError);
  // One network must give twice the channels.
  kiln::models::AffineCoupling<double> one(kiln::models::parity_mask<double>(4, 0), mlp(4, 4, 4, rng));
  CHECK_THROWS_WITH_AS(one.forward(random_batch({2, 4}, 1)), doctest::Contains("twice"), kiln::ShapeError);
  Flow flow(Shape{3, 4, 4});
  flow.add(std::make_shared<kiln::models::ActNorm<double>>(3));
  CHECK_THROWS_AS(flow.split(), kiln::ShapeError);  // 3 channels do not halve
  CHECK_THROWS_AS(flow.add(std::make_shared<kiln::models::ActNorm<double>>(2)), kiln::ShapeError);
  CHECK_THROWS_AS(flow.forward(random_batch({2, 3, 4, 2}, 1)), kiln::ShapeError);
  CHECK_THROWS_AS(flow.inverse(random_batch({2, 47}, 1)), kiln::ShapeError);
}

namespace {

// W5's flow with the reference's sizes (4 couplings, hidden width 64), PyTorch's weights loaded.
template <class T>
std::shared_ptr<kiln::models::Flow<T>> reference_realnvp() {
  using SNet = kiln::nn::BasicSequential<T>;
  kiln::Rng rng(5);
  const auto net = [&] {
    return std::make_shared<SNet>(std::make_shared<kiln::nn::BasicLinear<T>>(784, 64, rng), std::make_shared<kiln::nn::BasicReLU<T>>(),
                                  std::make_shared<kiln::nn::BasicLinear<T>>(64, 64, rng), std::make_shared<kiln::nn::BasicReLU<T>>(),
                                  std::make_shared<kiln::nn::BasicLinear<T>>(64, 784, rng));
  };
  auto flow = std::make_shared<kiln::models::Flow<T>>(Shape{784}, std::make_shared<kiln::models::LogitTransform<T>>(0.05));
  for (int k = 0; k < 4; ++k)
    flow->add(std::make_shared<kiln::models::AffineCoupling<T>>(kiln::models::parity_mask<T>(784, k % 2), net(), net(),
                                                                 kiln::models::AffineCouplingOptions{.tanh = true}));
  const kiln::io::SafeTensorsFile weights((kiln::test::torch_script_output("realnvp_reference.py") / "weights.safetensors").string());
  kiln::nn::StateDict<T> dict;
  for (const auto& n : weights.names()) dict.insert(n, weights.get<T>(n));
  flow->load_state_dict(dict);  // strict: PyTorch's names, masks included
  return flow;
}

}  // namespace

TEST_CASE_TEMPLATE("W5's RealNVP: log p(x) and every gradient equal PyTorch's", T, double, float) {
  constexpr bool is_double = std::is_same_v<T, double>;
  const std::string dtype = is_double ? "float64" : "float32";
  auto flow = reference_realnvp<T>();
  const kiln::io::SafeTensorsFile ref((kiln::test::torch_script_output("realnvp_reference.py") / "reference.safetensors").string());
  const kiln::Tensor<T> logp = flow->log_prob(ref.get<T>("x"));
  const kiln::Tensor<T> loss = kiln::mean(-logp);
  loss.backward();
  const double close = is_double ? 1e-12 : 1e-5, grad_close = is_double ? 1e-10 : 1e-4;
  CHECK(kiln::test::relative_difference(logp.detach(), ref.get<double>("logp." + dtype)) < close);
  CHECK(std::fabs(static_cast<double>(loss.item()) - ref.get<double>("loss." + dtype).to_vector()[0]) <
        close * std::fabs(ref.get<double>("loss." + dtype).to_vector()[0]));
  std::size_t checked = 0;
  double worst = 0;
  for (const auto& entry : flow->named_parameters()) {
    const std::string& name = entry.first;
    const kiln::Tensor<T>& p = entry.second;
    CAPTURE(name);
    const double d = kiln::test::relative_difference(p.grad(), ref.get<double>("grad." + dtype + "." + name));
    worst = std::max(worst, d);
    CHECK(d < grad_close);
    ++checked;
  }
  CHECK(checked == 4 * 2 * 6);
  MESSAGE(dtype << ": loss " << loss.item() << ", worst gradient relative difference " << worst);
}

TEST_CASE("W5's RealNVP: ten Adam steps in lockstep with PyTorch (same weights and batches)") {
  auto flow = reference_realnvp<float>();
  const kiln::io::SafeTensorsFile ref((kiln::test::torch_script_output("realnvp_reference.py") / "reference.safetensors").string());
  kiln::optim::AdamOptions options;
  options.lr = 1e-3;
  kiln::optim::Adam opt(flow->parameters(), options);
  const std::vector<double> losses = ref.get<double>("train.loss").to_vector();
  REQUIRE(losses.size() == 10);
  for (std::size_t s = 0; s < losses.size(); ++s) {
    opt.zero_grad();
    const kiln::Tensor<float> loss = kiln::mean(-flow->log_prob(ref.get<float>("train.x." + std::to_string(s))));
    loss.backward();
    opt.step();
    CAPTURE(s);
    CHECK(std::fabs(static_cast<double>(loss.item()) - losses[s]) < 1e-5 * std::fabs(losses[s]));
  }
  // The parameters after ten steps: the same up to float32 rounding, far below the distance the
  // steps moved them (Adam moves each weight by up to 10 · lr = 1e-2).
  for (const auto& entry : flow->named_parameters()) {
    const std::string& name = entry.first;
    const kiln::Tensor<float>& p = entry.second;
    CAPTURE(name);
    const auto got = p.contiguous().to_vector();
    const auto want = ref.get<double>("final." + name).to_vector();
    double diff = 0;
    for (std::size_t i = 0; i < want.size(); ++i) diff = std::max(diff, std::fabs(static_cast<double>(got[i]) - want[i]));
    CHECK(diff < 1e-5);
  }
}
