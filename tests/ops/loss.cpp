// Tests of include/kiln/ops/loss.hpp: exact values by hand, cross_entropy against a double loop
// (ignore_index, label smoothing, [N, C, d...] layouts, GPT-sized rows), gradcheck and
// gradgradcheck in float64 for every loss and reduction, errors for bad targets and shapes, and a
// comparison of outputs and gradients with PyTorch (tests/torch/ops_reference.py).
#include <doctest/doctest.h>
#include <kiln/kiln.hpp>
// After kiln.hpp: gradcheck.hpp's inline functions need the CPU backend defined.
#include <kiln/autograd/gradcheck.hpp>
#include <kiln/ops/loss.hpp>

#include "../support/torch_reference.hpp"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iomanip>
#include <limits>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <unistd.h>

using kiln::index_t;
using kiln::LossReduction;
using kiln::Shape;
using kiln::Tensor;

namespace {

using Inputs = std::vector<Tensor<double>>;
constexpr LossReduction all_reductions[] = {LossReduction::mean, LossReduction::sum, LossReduction::none};

const char* reduction_name(LossReduction r) {
  return r == LossReduction::mean ? "mean" : r == LossReduction::sum ? "sum" : "none";
}

Tensor<index_t> indices(std::vector<index_t> v, Shape s) { return kiln::from_vector<index_t>(v, s); }
Tensor<index_t> indices(std::vector<index_t> v) {
  const auto n = static_cast<index_t>(v.size());
  return kiln::from_vector<index_t>(std::move(v), Shape{n});
}
// Random class targets in [0, C), with every `ignore_every`-th replaced by `ignore` (0: none).
Tensor<index_t> random_targets(Shape shape, index_t C, kiln::Rng& rng, int ignore_every = 0, index_t ignore = -100) {
  auto u = kiln::rand<double>(shape, rng);
  auto t = Tensor<index_t>::uninitialized(shape);
  for (index_t i = 0; i < t.numel(); ++i) {
    t.data()[i] = std::min<index_t>(C - 1, static_cast<index_t>(u.data()[i] * static_cast<double>(C)));
    if (ignore_every > 0 && i % ignore_every == 1) t.data()[i] = ignore;
  }
  return t;
}

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const kiln::Error& e) {
    return e.what();
  }
  return "";
}

void check_gradcheck(const std::function<Tensor<double>(const Inputs&)>& f, const Inputs& in) {
  auto r = kiln::gradcheck(f, in);
  CHECK_MESSAGE(r.ok, r.message);
}
void check_gradgradcheck(const std::function<Tensor<double>(const Inputs&)>& f, const Inputs& in) {
  auto r = kiln::gradgradcheck(f, in);
  CHECK_MESSAGE(r.ok, r.message);
}

// Cross-entropy per position of logits [N, C, S] by the definition, in double; NaN-free, 0 where
// ignored. Returns the loss reduced as asked, flattened.
std::vector<double> naive_cross_entropy(const Tensor<float>& logits, const Tensor<index_t>& targets, index_t ignore,
                                        double eps, LossReduction r) {
  const Tensor<float> x = logits.contiguous();
  const index_t N = x.dim() == 1 ? 1 : x.size(0), C = x.dim() == 1 ? x.size(0) : x.size(1);
  const index_t S = x.numel() / std::max<index_t>(1, N * C);
  std::vector<double> per(static_cast<std::size_t>(N * S), 0.0);
  double total = 0;
  index_t kept = 0;
  for (index_t n = 0; n < N; ++n)
    for (index_t s = 0; s < S; ++s) {
      const index_t t = targets.contiguous().data()[n * S + s];
      if (t == ignore) continue;
      auto at = [&](index_t c) { return static_cast<double>(x.data()[(n * C + c) * S + s]); };
      double m = -std::numeric_limits<double>::infinity();
      for (index_t c = 0; c < C; ++c) m = std::max(m, at(c));
      double z = 0;
      for (index_t c = 0; c < C; ++c) z += std::exp(at(c) - m);
      const double lse = m + std::log(z);
      double smooth = 0;
      for (index_t c = 0; c < C; ++c) smooth += lse - at(c);
      const double v = (1 - eps) * (lse - at(t)) + eps * smooth / static_cast<double>(C);
      per[static_cast<std::size_t>(n * S + s)] = v;
      total += v;
      ++kept;
    }
  if (r == LossReduction::none) return per;
  return {r == LossReduction::sum ? total : total / static_cast<double>(kept)};
}

void check_close(const Tensor<float>& got, const std::vector<double>& want, double tol) {
  const std::vector<float> g = got.to_vector();
  REQUIRE(g.size() == want.size());
  for (std::size_t i = 0; i < g.size(); ++i)
    CHECK(std::abs(static_cast<double>(g[i]) - want[i]) <= tol * (1 + std::abs(want[i])));
}

// --- PyTorch cross-check: cases written for tests/torch/ops_reference.py -----------------------
struct FloatInput {
  std::string name;
  Tensor<float> value;
  bool grad;
};
struct IndexInput {
  std::string name;
  Tensor<index_t> value;
};
using CaseFn = std::function<std::vector<Tensor<float>>(const std::vector<Tensor<float>>&)>;

template <class T>
void put_tensor(std::ostream& os, const Tensor<T>& t) {
  os << t.dim();
  for (int d = 0; d < t.dim(); ++d) os << ' ' << t.size(d);
  for (T v : t.to_vector()) os << ' ' << v;
  os << '\n';
}

// Runs `f` on the float inputs (tracked where grad is set) and writes the case: inputs, kiln's
// outputs, a random seed per output and kiln's gradients of Σ_k <output_k, seed_k>.
void add_case(std::ostream& os, kiln::Rng& rng, const std::string& name, const std::string& op,
              const std::vector<std::pair<std::string, std::string>>& params, const std::vector<FloatInput>& floats,
              const std::vector<IndexInput>& index_inputs, const CaseFn& f) {
  os << "case " << name << ' ' << op << '\n';
  for (const auto& [key, value] : params) os << "param " << key << ' ' << value << '\n';
  std::vector<Tensor<float>> leaves, wrt;
  std::vector<std::string> wrt_names;
  for (const auto& in : floats) {
    os << "input " << in.name << " f " << (in.grad ? 1 : 0) << ' ';
    put_tensor(os, in.value);
    Tensor<float> leaf = in.value.clone();
    if (in.grad) {
      leaf.requires_grad();
      wrt.push_back(leaf);
      wrt_names.push_back(in.name);
    }
    leaves.push_back(leaf);
  }
  for (const auto& in : index_inputs) {
    os << "input " << in.name << " i 0 ";
    put_tensor(os, in.value);
  }
  const std::vector<Tensor<float>> outputs = f(leaves);
  std::vector<Tensor<float>> seeds;
  for (const auto& o : outputs) {
    os << "output ";
    put_tensor(os, o);
  }
  for (const auto& o : outputs) {
    seeds.push_back(kiln::randn<float>(o.shape(), rng));
    os << "seed ";
    put_tensor(os, seeds.back());
  }
  if (!wrt.empty()) {
    const auto grads = kiln::grad(outputs, wrt, seeds, false, false, true);
    for (std::size_t i = 0; i < wrt.size(); ++i) {
      os << "grad " << wrt_names[i] << ' ';
      put_tensor(os, grads[i].defined() ? grads[i] : Tensor<float>(wrt[i].shape()));
    }
  }
  os << "end\n";
}

// Writes the cases to a temporary file and has PyTorch check them.
void check_with_torch(const std::string& cases, const std::string& tag) {
  namespace fs = std::filesystem;
  const std::string path =
      (fs::temp_directory_path() / ("kiln_ops_" + tag + "_" + std::to_string(::getpid()) + ".txt")).string();
  {
    std::ofstream file(path);
    file << cases;
  }
  const int status = kiln::test::run_torch_script("ops_reference.py", kiln::test::shell_quote(path));
  CHECK_MESSAGE(status == 0, "PyTorch disagrees with kiln (the output above lists the mismatches)");
  fs::remove(path);
}

}  // namespace

TEST_CASE("cross_entropy and nll_loss by hand") {
  // logits [0, 0], target 0: −log(1/2) = log 2
  auto zero = kiln::zeros<float>({1, 2});
  CHECK(kiln::cross_entropy(zero, indices({0})).item() == doctest::Approx(std::log(2.0)));
  CHECK(kiln::cross_entropy(kiln::zeros<float>({2}), indices({1}, Shape{})).item() == doctest::Approx(std::log(2.0)));
  CHECK(kiln::cross_entropy(kiln::zeros<float>({2}), indices({1}, Shape{}), LossReduction::none).shape() == Shape{});
  // logits [0, log 3] → p = [1/4, 3/4]
  auto x = kiln::from_vector<double>({0, 0, 0, std::log(3.0), 5, 5}, Shape{3, 2});
  auto none = kiln::cross_entropy(x, indices({0, 1, 1}), LossReduction::none).to_vector();
  CHECK(none[0] == doctest::Approx(std::log(2.0)).epsilon(1e-14));
  CHECK(none[1] == doctest::Approx(-std::log(0.75)).epsilon(1e-14));
  CHECK(none[2] == doctest::Approx(std::log(2.0)).epsilon(1e-14));
  // ignored rows count for nothing, in the sum and in the mean's denominator
  const double two_rows = std::log(2.0) - std::log(0.75);
  CHECK(kiln::cross_entropy(x, indices({0, 1, -100})).item() == doctest::Approx(two_rows / 2).epsilon(1e-14));
  CHECK(kiln::cross_entropy(x, indices({0, 1, -100}), LossReduction::sum).item() ==
        doctest::Approx(two_rows).epsilon(1e-14));
  // ignore_index 1: rows with targets 0, 0 count (log 2 and −log(1/4)), the third is ignored
  CHECK(kiln::cross_entropy(x, indices({0, 0, 1}), LossReduction::mean, 1).item() ==
        doctest::Approx(1.5 * std::log(2.0)).epsilon(1e-14));
  CHECK(kiln::cross_entropy(x, indices({0, 0, 0}), LossReduction::mean, 0).item() != 0);  // NaN: all ignored
  CHECK(std::isnan(kiln::cross_entropy(x, indices({0, 0, 0}), LossReduction::mean, 0).item()));
  // label smoothing ε: (1 − ε)(−log p_t) + ε·mean_c(−log p_c)
  const double eps = 0.2;
  const double smoothed = (1 - eps) * -std::log(0.75) + eps * (std::log(4.0) - std::log(0.75)) / 2;
  CHECK(kiln::cross_entropy(x.slice(0, 1, 2), indices({1}), LossReduction::mean, -100, eps).item() ==
        doctest::Approx(smoothed).epsilon(1e-14));
  // nll_loss picks −log_probs[n, t_n]
  auto lp = kiln::from_vector<float>({-1, -2, -3, -4}, Shape{2, 2});
  CHECK(kiln::nll_loss(lp, indices({1, 0})).item() == 2.5f);
  CHECK(kiln::nll_loss(lp, indices({1, 0}), LossReduction::sum).item() == 5.0f);
  CHECK(kiln::nll_loss(lp, indices({1, -100}), LossReduction::none).to_vector() == std::vector<float>{2, 0});
  CHECK(kiln::nll_loss(lp, indices({1, 1}), LossReduction::mean, 1).item() != 0.0f);  // NaN: all ignored
}

TEST_CASE("gradients of cross_entropy: softmax − one-hot, zero for ignored rows") {
  auto x = kiln::from_vector<double>({0, 0, 0, std::log(3.0), 1, 2}, Shape{3, 2}).requires_grad();
  kiln::cross_entropy(x, indices({0, 1, -100})).backward();
  const auto g = x.grad().to_vector();
  // mean over 2 kept rows: (p − onehot) / 2
  CHECK(g[0] == doctest::Approx(-0.25));
  CHECK(g[1] == doctest::Approx(0.25));
  CHECK(g[2] == doctest::Approx(0.125));
  CHECK(g[3] == doctest::Approx(-0.125));
  CHECK(g[4] == 0.0);
  CHECK(g[5] == 0.0);
  // every row ignored: the loss is NaN, the gradient zero (as PyTorch)
  kiln::Rng rng(3);
  auto y = kiln::randn<float>({2, 3, 4}, rng).requires_grad();
  kiln::cross_entropy(y, indices({-100, -100, -100, -100, -100, -100, -100, -100}, Shape{2, 4})).backward();
  for (float v : y.grad().to_vector()) CHECK(v == 0.0f);
  auto z = kiln::randn<float>({2, 3}, rng).requires_grad();
  kiln::nll_loss(z, indices({-100, -100})).backward();
  for (float v : z.grad().to_vector()) CHECK(v == 0.0f);
  // the plain backward (fused) and the create_graph backward (tracked ops) agree
  for (Shape shape : {Shape{5, 7}, Shape{3, 4, 2, 3}}) {
    auto logits = kiln::randn<double>(shape, rng).requires_grad();
    Shape tshape;
    tshape.push_back(shape.dims[0]);
    for (int d = 2; d < shape.ndim; ++d) tshape.push_back(shape.dims[d]);
    auto t = random_targets(tshape, shape.dims[1], rng, 3);
    for (LossReduction r : all_reductions) {
      auto loss = kiln::cross_entropy(logits, t, r, -100, 0.3);
      auto seed = kiln::randn<double>(loss.shape(), rng);
      auto plain = kiln::grad<double, kiln::cpu>({loss}, {logits}, {seed}, true)[0].to_vector();
      auto tracked = kiln::grad<double, kiln::cpu>({loss}, {logits}, {seed}, false, true)[0].to_vector();
      for (std::size_t i = 0; i < plain.size(); ++i) CHECK(plain[i] == doctest::Approx(tracked[i]).epsilon(1e-12));
    }
  }
}

TEST_CASE("cross_entropy against a double loop: layouts, ignore_index, label smoothing, wide rows") {
  kiln::Rng rng(29);
  struct Layout {
    Shape logits, targets;
  };
  for (const Layout& l : {Layout{{128, 10}, {128}}, Layout{{4, 5, 3, 2}, {4, 3, 2}}, Layout{{3, 6, 1}, {3, 1}},
                          Layout{{7}, {}}, Layout{{64, 50257}, {64}}})
    for (double eps : {0.0, 0.1})
      for (LossReduction r : all_reductions) {
        CAPTURE(to_string(l.logits));
        CAPTURE(eps);
        CAPTURE(reduction_name(r));
        const index_t C = l.logits.ndim == 1 ? l.logits.dims[0] : l.logits.dims[1];
        auto x = kiln::randn<float>(l.logits, rng, 0.0f, 3.0f);
        auto t = random_targets(l.targets, C, rng, l.targets.numel() > 2 ? 5 : 0);
        check_close(kiln::cross_entropy(x, t, r, -100, eps), naive_cross_entropy(x, t, -100, eps, r), 2e-5);
      }
  // a non-contiguous logits view gives the values of its copy
  auto x = kiln::randn<float>({10, 6}, rng).t();
  auto t = random_targets({6}, 10, rng);
  check_close(kiln::cross_entropy(x, t, LossReduction::none), naive_cross_entropy(x.contiguous(), t, -100, 0, LossReduction::none), 1e-5);
}

TEST_CASE("the other losses by hand") {
  auto a = kiln::from_vector<float>({1, 2, 3});
  auto b = kiln::from_vector<float>({1, 0, 0});
  CHECK(kiln::mse_loss(a, b).item() == doctest::Approx(13.0 / 3));
  CHECK(kiln::mse_loss(a, b, LossReduction::sum).item() == 13.0f);
  CHECK(kiln::mse_loss(a, b, LossReduction::none).to_vector() == std::vector<float>{0, 4, 9});
  CHECK(kiln::l1_loss(a, b).item() == doctest::Approx(5.0 / 3));
  // broadcasting: [3, 1] against [4] gives [3, 4]
  CHECK(kiln::mse_loss(kiln::zeros<float>({3, 1}), kiln::ones<float>({4}), LossReduction::none).shape() == Shape{3, 4});
  // binary cross-entropy: p = 1/2 → log 2; the log is clamped at −100
  auto p = kiln::from_vector<float>({0.5f, 0, 1, 0, 1}).requires_grad();
  auto y = kiln::from_vector<float>({1, 0, 1, 1, 0});
  auto bce = kiln::binary_cross_entropy(p, y, LossReduction::none);
  const auto bv = bce.to_vector();
  CHECK(bv[0] == doctest::Approx(std::log(2.0)));
  CHECK(bv[1] == 0.0f);
  CHECK(bv[2] == 0.0f);
  CHECK(bv[3] == 100.0f);
  CHECK(bv[4] == 100.0f);
  kiln::sum(bce).backward();
  // (p − y) / max(p(1 − p), 1e-12): finite at p = 0 and 1, as PyTorch
  const auto pg = p.grad().to_vector();
  CHECK(pg[0] == doctest::Approx(-2.0));
  CHECK(pg[1] == 0.0f);
  CHECK(pg[2] == 0.0f);
  CHECK(pg[3] == doctest::Approx(-1e12));
  CHECK(pg[4] == doctest::Approx(1e12));
  CHECK(kiln::binary_cross_entropy(kiln::full<float>({2}, 0.5f), kiln::ones<float>({2}), LossReduction::mean,
                                   kiln::from_vector<float>({1, 3}))
            .item() == doctest::Approx(2 * std::log(2.0)));
  // with logits: x = 0 → log 2; no overflow at ±1000; the tiny tail log(1 + e^−30) is kept
  auto z = kiln::from_vector<double>({0, 1000, -1000, -30, 30}).requires_grad();
  auto zy = kiln::from_vector<double>({1, 0, 1, 0, 1});
  auto bl = kiln::binary_cross_entropy_with_logits(z, zy, LossReduction::none);
  const auto blv = bl.to_vector();
  CHECK(blv[0] == doctest::Approx(std::log(2.0)));
  CHECK(blv[1] == doctest::Approx(1000.0));
  CHECK(blv[2] == doctest::Approx(1000.0));
  CHECK(blv[3] == doctest::Approx(std::log1p(std::exp(-30.0))).epsilon(1e-9));
  CHECK(blv[4] == doctest::Approx(std::log1p(std::exp(-30.0))).epsilon(1e-9));
  kiln::sum(bl).backward();
  // σ(x) − y; at x = 0 that is −1/2 (a sum of separate max(x, 0) and |x| terms would get it wrong)
  CHECK(z.grad().to_vector()[0] == doctest::Approx(-0.5));
  CHECK(z.grad().to_vector()[1] == doctest::Approx(1.0));
  CHECK(z.grad().to_vector()[2] == doctest::Approx(-1.0));
  // pos_weight multiplies the positive term: x = 0, y = 1, pw = 3 → 3 log 2
  CHECK(kiln::binary_cross_entropy_with_logits(kiln::zeros<float>({1}), kiln::ones<float>({1}), LossReduction::sum,
                                               kiln::full<float>({1}, 3.0f))
            .item() == doctest::Approx(3 * std::log(2.0)));
  // Gaussian KL: 0 at N(0, 1); mu = [1, 2], logvar = 0 → (1 + 4)/2 per sample
  CHECK(kiln::gaussian_kl(kiln::zeros<float>({4, 3}), kiln::zeros<float>({4, 3})).item() == 0.0f);
  auto mu = kiln::from_vector<float>({1, 2, 0, 0}, Shape{2, 2});
  CHECK(kiln::gaussian_kl(mu, kiln::zeros<float>({2, 2})).item() == 2.5f);
  CHECK(kiln::gaussian_kl(mu, kiln::zeros<float>({2, 2}), LossReduction::mean).item() == 1.25f);
  CHECK(kiln::gaussian_kl(mu, kiln::zeros<float>({2, 2}), LossReduction::none).to_vector() == std::vector<float>{2.5f, 0});
  // logvar = log 2, mu = 0: −½(1 + log 2 − 2) per element
  auto lv = kiln::full<double>({1, 3}, std::log(2.0));
  CHECK(kiln::gaussian_kl(kiln::zeros<double>({1, 3}), lv).item() == doctest::Approx(-1.5 * (std::log(2.0) - 1)));
  // Gaussian NLL: ½(log v + (x − t)²/v) [+ ½ log 2π]; var clamped at eps
  auto in = kiln::zeros<double>({2});
  auto tg = kiln::ones<double>({2});
  CHECK(kiln::gaussian_nll_loss(in, tg, kiln::ones<double>({2})).item() == doctest::Approx(0.5));
  CHECK(kiln::gaussian_nll_loss(in, tg, kiln::full<double>({2}, 4.0), true).item() ==
        doctest::Approx(0.5 * (std::log(4.0) + 0.25) + 0.5 * std::log(2 * 3.14159265358979323846)));
  CHECK(kiln::gaussian_nll_loss(in, tg, kiln::zeros<double>({2})).item() ==
        doctest::Approx(0.5 * (std::log(1e-6) + 1e6)));
}

TEST_CASE("gradcheck: every loss and reduction, broadcast, strided and size-1 inputs") {
  kiln::Rng rng(31);
  for (LossReduction r : all_reductions) {
    CAPTURE(reduction_name(r));
    check_gradcheck([r](const Inputs& in) { return kiln::mse_loss(in[0], in[1], r); },
                    {kiln::randn<double>({3, 4}, rng), kiln::randn<double>({3, 4}, rng)});
    check_gradcheck([r](const Inputs& in) { return kiln::mse_loss(in[0].t(), in[1], r); },
                    {kiln::randn<double>({4, 3}, rng), kiln::randn<double>({1, 4}, rng)});
    check_gradcheck([r](const Inputs& in) { return kiln::l1_loss(in[0], in[1].slice(1, 0, 4, 2), r); },
                    {kiln::randn<double>({3, 1}, rng), kiln::randn<double>({3, 4}, rng)});
    check_gradcheck(
        [r](const Inputs& in) {
          return kiln::binary_cross_entropy(Tensor<double>(kiln::sigmoid(in[0])), in[1], r, in[2]);
        },
        {kiln::randn<double>({3, 4}, rng), kiln::rand<double>({3, 4}, rng), kiln::rand<double>({4}, rng)});
    check_gradcheck([r](const Inputs& in) { return kiln::binary_cross_entropy(in[0].t(), in[1], r); },
                    {kiln::rand<double>({4, 3}, rng, 0.05, 0.95), kiln::rand<double>({3, 4}, rng)});
    check_gradcheck(
        [r](const Inputs& in) { return kiln::binary_cross_entropy_with_logits(in[0], in[1], r, in[2], in[3]); },
        {kiln::randn<double>({3, 4}, rng, 0.0, 3.0), kiln::rand<double>({3, 4}, rng), kiln::rand<double>({4}, rng, 0.5, 2.0),
         kiln::rand<double>({3, 1}, rng)});
    check_gradcheck([r](const Inputs& in) { return kiln::binary_cross_entropy_with_logits(in[0].t(), in[1], r); },
                    {kiln::randn<double>({1, 5}, rng), kiln::rand<double>({5, 1}, rng)});
    check_gradcheck([r](const Inputs& in) { return kiln::gaussian_kl(in[0], in[1], r); },
                    {kiln::randn<double>({3, 2, 2}, rng), kiln::randn<double>({3, 2, 2}, rng)});
    check_gradcheck([r](const Inputs& in) { return kiln::gaussian_kl(in[0].t(), in[1], r); },
                    {kiln::randn<double>({4, 2}, rng), kiln::randn<double>({2, 4}, rng)});
    for (Shape var_shape : {Shape{3, 4}, Shape{3}, Shape{3, 1}})
      for (bool full : {false, true})
        check_gradcheck([r, full](const Inputs& in) { return kiln::gaussian_nll_loss(in[0], in[1], in[2], full, 1e-6, r); },
                        {kiln::randn<double>({3, 4}, rng), kiln::randn<double>({3, 4}, rng),
                         kiln::rand<double>(var_shape, rng, 0.2, 2.0)});
    // cross_entropy and nll_loss: [N, C] (row kernel) and [N, C, d...], ignored targets, smoothing
    auto t2 = random_targets({6}, 4, rng, 4);
    auto t4 = random_targets({2, 3, 2}, 5, rng, 4);
    for (double eps : {0.0, 0.25}) {
      check_gradcheck([r, t2, eps](const Inputs& in) { return kiln::cross_entropy(in[0], t2, r, -100, eps); },
                      {kiln::randn<double>({6, 4}, rng)});
      check_gradcheck([r, t2, eps](const Inputs& in) { return kiln::cross_entropy(in[0].t(), t2, r, -100, eps); },
                      {kiln::randn<double>({4, 6}, rng)});
      check_gradcheck([r, t4, eps](const Inputs& in) { return kiln::cross_entropy(in[0], t4, r, -100, eps); },
                      {kiln::randn<double>({2, 5, 3, 2}, rng)});
      check_gradcheck([r, eps](const Inputs& in) { return kiln::cross_entropy(in[0], indices({2}, Shape{}), r, -100, eps); },
                      {kiln::randn<double>({3}, rng)});
    }
    check_gradcheck([r, t2](const Inputs& in) { return kiln::nll_loss(in[0], t2, r); }, {kiln::randn<double>({6, 4}, rng)});
    check_gradcheck([r, t4](const Inputs& in) { return kiln::nll_loss(in[0].permute({0, 1, 2, 3}), t4, r); },
                    {kiln::randn<double>({2, 5, 3, 2}, rng)});
    check_gradcheck([r](const Inputs& in) { return kiln::cross_entropy(in[0], indices({0, 0}), r); },
                    {kiln::randn<double>({2, 1}, rng)});
  }
}

TEST_CASE("gradgradcheck: the losses are differentiable twice") {
  kiln::Rng rng(37);
  auto t2 = random_targets({5}, 4, rng, 3);
  auto t3 = random_targets({2, 3}, 4, rng, 4);
  for (LossReduction r : {LossReduction::mean, LossReduction::none}) {
    CAPTURE(reduction_name(r));
    check_gradgradcheck([r, t2](const Inputs& in) { return kiln::cross_entropy(in[0], t2, r, -100, 0.2); },
                        {kiln::randn<double>({5, 4}, rng)});
    check_gradgradcheck([r, t3](const Inputs& in) { return kiln::cross_entropy(in[0], t3, r); },
                        {kiln::randn<double>({2, 4, 3}, rng)});
    check_gradgradcheck([r, t2](const Inputs& in) { return kiln::nll_loss(Tensor<double>(kiln::tanh(in[0])), t2, r); },
                        {kiln::randn<double>({5, 4}, rng)});
    check_gradgradcheck([r](const Inputs& in) { return kiln::mse_loss(in[0], in[1], r); },
                        {kiln::randn<double>({3, 2}, rng), kiln::randn<double>({2}, rng)});
    check_gradgradcheck([r](const Inputs& in) { return kiln::binary_cross_entropy(in[0], in[1], r); },
                        {kiln::rand<double>({3, 2}, rng, 0.1, 0.9), kiln::rand<double>({3, 2}, rng)});
    check_gradgradcheck(
        [r](const Inputs& in) { return kiln::binary_cross_entropy_with_logits(in[0], in[1], r, in[2]); },
        {kiln::randn<double>({3, 2}, rng), kiln::rand<double>({3, 2}, rng), kiln::rand<double>({2}, rng, 0.5, 2.0)});
    check_gradgradcheck([r](const Inputs& in) { return kiln::gaussian_kl(in[0], in[1], r); },
                        {kiln::randn<double>({3, 2}, rng), kiln::randn<double>({3, 2}, rng)});
    check_gradgradcheck([r](const Inputs& in) { return kiln::gaussian_nll_loss(in[0], in[1], in[2], true, 1e-6, r); },
                        {kiln::randn<double>({3, 2}, rng), kiln::randn<double>({3, 2}, rng),
                         kiln::rand<double>({3}, rng, 0.5, 2.0)});
  }
}

TEST_CASE("errors: bad targets, shapes and arguments") {
  auto logits = kiln::zeros<float>({3, 4});
  const std::string e = error_of([&] { kiln::cross_entropy(logits, indices({0, 4, 1})); });
  CHECK(e.find("cross_entropy") != std::string::npos);
  CHECK(e.find("target 4 at position [1]") != std::string::npos);
  CHECK(e.find("[0, 4)") != std::string::npos);
  CHECK_THROWS_AS(kiln::cross_entropy(logits, indices({0, -1, 1})), kiln::IndexError);
  CHECK_THROWS_AS(kiln::cross_entropy(logits, indices({0, 1})), kiln::ShapeError);
  CHECK_THROWS_AS(kiln::cross_entropy(logits, indices({0, 1, 2}, Shape{3, 1})), kiln::ShapeError);
  CHECK_THROWS_AS(kiln::cross_entropy(kiln::zeros<float>({2, 3, 4}), indices({0, 1, 2}, Shape{1, 3})), kiln::ShapeError);
  CHECK_THROWS_AS(kiln::cross_entropy(logits, indices({0, 1, 2}), LossReduction::mean, -100, 1.5), kiln::ValueError);
  CHECK_THROWS_AS(kiln::cross_entropy(Tensor<float>(Shape{}), indices({0}, Shape{})), kiln::ShapeError);
  const std::string n = error_of([&] { kiln::nll_loss(kiln::zeros<float>({2, 3, 2}), indices({0, 1, 2, 3}, Shape{2, 2})); });
  CHECK(n.find("target 3 at position [1, 1]") != std::string::npos);
  CHECK_THROWS_AS(kiln::mse_loss(kiln::zeros<float>({3}), kiln::zeros<float>({4})), kiln::ShapeError);
  CHECK_THROWS_AS(kiln::binary_cross_entropy(kiln::zeros<float>({3}), kiln::zeros<float>({3, 1})), kiln::ShapeError);
  const std::string b = error_of([&] { kiln::binary_cross_entropy(kiln::full<float>({3}, 1.5f), kiln::zeros<float>({3})); });
  CHECK(b.find("[0, 1]") != std::string::npos);
  CHECK_THROWS_AS(kiln::binary_cross_entropy_with_logits(kiln::zeros<float>({3, 2}), kiln::zeros<float>({3, 2}),
                                                         LossReduction::mean, kiln::ones<float>({3})),
                  kiln::ShapeError);
  CHECK_THROWS_AS(kiln::gaussian_kl(kiln::zeros<float>({3, 2}), kiln::zeros<float>({3})), kiln::ShapeError);
  CHECK_THROWS_AS(kiln::gaussian_kl(Tensor<float>(Shape{}), Tensor<float>(Shape{})), kiln::ShapeError);
  CHECK_THROWS_AS(kiln::gaussian_nll_loss(kiln::zeros<float>({3, 2}), kiln::zeros<float>({3, 2}), kiln::ones<float>({2})),
                  kiln::ShapeError);
  CHECK_THROWS_AS(kiln::gaussian_nll_loss(kiln::zeros<float>({3}), kiln::zeros<float>({3}), kiln::full<float>({3}, -1.0f)),
                  kiln::ValueError);
}

TEST_CASE("outputs and gradients agree with PyTorch") {
  kiln::Rng rng(41);
  std::ostringstream os;
  os << std::setprecision(9);
  using Outs = std::vector<Tensor<float>>;
  using In = const std::vector<Tensor<float>>&;
  int k = 0;
  auto name = [&k](const std::string& op) { return op + "_" + std::to_string(k++); };
  for (LossReduction r : all_reductions) {
    const std::pair<std::string, std::string> red{"reduction", reduction_name(r)};
    add_case(os, rng, name("mse"), "mse_loss", {red},
             {{"input", kiln::randn<float>({4, 3}, rng), true}, {"target", kiln::randn<float>({3}, rng), true}}, {},
             [r](In in) { return Outs{kiln::mse_loss(in[0], in[1], r)}; });
    add_case(os, rng, name("l1"), "l1_loss", {red},
             {{"input", kiln::randn<float>({4, 3}, rng), true}, {"target", kiln::randn<float>({4, 3}, rng), true}}, {},
             [r](In in) { return Outs{kiln::l1_loss(in[0], in[1], r)}; });
    add_case(os, rng, name("bce"), "binary_cross_entropy", {red},
             {{"input", kiln::rand<float>({5, 3}, rng, 0.02f, 0.98f), true},
              {"target", kiln::rand<float>({5, 3}, rng), true},
              {"weight", kiln::rand<float>({3}, rng), false}},
             {}, [r](In in) { return Outs{kiln::binary_cross_entropy(in[0], in[1], r, in[2])}; });
    add_case(os, rng, name("bce_logits"), "binary_cross_entropy_with_logits", {red},
             {{"input", kiln::randn<float>({5, 3}, rng, 0.0f, 4.0f), true},
              {"target", kiln::rand<float>({5, 3}, rng), true},
              {"pos_weight", kiln::rand<float>({3}, rng, 0.5f, 3.0f), false},  // PyTorch: not differentiable
              {"weight", kiln::rand<float>({5, 1}, rng), false}},
             {}, [r](In in) { return Outs{kiln::binary_cross_entropy_with_logits(in[0], in[1], r, in[2], in[3])}; });
    add_case(os, rng, name("bce_logits_plain"), "binary_cross_entropy_with_logits", {red},
             {{"input", kiln::randn<float>({7}, rng, 0.0f, 10.0f), true}, {"target", kiln::rand<float>({7}, rng), true}},
             {}, [r](In in) { return Outs{kiln::binary_cross_entropy_with_logits(in[0], in[1], r)}; });
    for (double eps : {0.0, 0.15}) {
      const std::pair<std::string, std::string> smooth{"label_smoothing", std::to_string(eps)};
      auto t = random_targets({16}, 10, rng, 5);
      add_case(os, rng, name("ce"), "cross_entropy", {red, smooth}, {{"input", kiln::randn<float>({16, 10}, rng, 0.0f, 2.0f), true}},
               {{"target", t}}, [r, t, eps](In in) { return Outs{kiln::cross_entropy(in[0], t, r, -100, eps)}; });
      auto t4 = random_targets({3, 4, 2}, 6, rng, 5, 2);
      add_case(os, rng, name("ce_4d"), "cross_entropy", {red, smooth, {"ignore_index", "2"}},
               {{"input", kiln::randn<float>({3, 6, 4, 2}, rng), true}}, {{"target", t4}},
               [r, t4, eps](In in) { return Outs{kiln::cross_entropy(in[0], t4, r, 2, eps)}; });
    }
    auto tw = random_targets({4}, 50257, rng, 3);
    add_case(os, rng, name("ce_wide"), "cross_entropy", {red}, {{"input", kiln::randn<float>({4, 50257}, rng, 0.0f, 3.0f), true}},
             {{"target", tw}}, [r, tw](In in) { return Outs{kiln::cross_entropy(in[0], tw, r)}; });
    auto tn = random_targets({6, 3}, 5, rng, 4);
    add_case(os, rng, name("nll"), "nll_loss", {red}, {{"input", kiln::randn<float>({6, 5, 3}, rng), true}}, {{"target", tn}},
             [r, tn](In in) { return Outs{kiln::nll_loss(in[0], tn, r)}; });
    add_case(os, rng, name("kl"), "gaussian_kl", {red},
             {{"mu", kiln::randn<float>({4, 3, 2}, rng), true}, {"logvar", kiln::randn<float>({4, 3, 2}, rng), true}}, {},
             [r](In in) { return Outs{kiln::gaussian_kl(in[0], in[1], r)}; });
    for (Shape var_shape : {Shape{4, 3}, Shape{4}, Shape{4, 1}})
      for (bool full : {false, true}) {
        Tensor<float> var = kiln::rand<float>(var_shape, rng, 0.1f, 2.0f);
        var.data()[0] = 1e-8f;  // below eps: clamped, with the gradient passed straight through
        add_case(os, rng, name("gnll"), "gaussian_nll_loss", {red, {"full", full ? "1" : "0"}, {"eps", "1e-6"}},
                 {{"input", kiln::randn<float>({4, 3}, rng), true},
                  {"target", kiln::randn<float>({4, 3}, rng), true},
                  {"var", var, true}},
                 {}, [r, full](In in) { return Outs{kiln::gaussian_nll_loss(in[0], in[1], in[2], full, 1e-6, r)}; });
      }
  }
  check_with_torch(os.str(), "loss");
}
