// Tests of include/kiln/ops/norm.hpp: layer_norm, rms_norm, group_norm and batch_norm. Hand values,
// forward against double loops (contiguous and strided inputs) and against the composed (generic
// device) path, gradcheck and gradgradcheck in float64 (affine or not, strided inputs, size-1
// dims), plain and create_graph gradients agreeing, running statistics against hand-computed
// values, errors, a gradient penalty through a normalized discriminator, and outputs and gradients
// against PyTorch (tests/torch/norm_reference.py, tensors exchanged as safetensors files).
#include <doctest/doctest.h>
#include <kiln/kiln.hpp>
// After kiln.hpp: gradcheck.hpp's inline functions need the CPU backend defined.
#include <kiln/autograd/gradcheck.hpp>
#include <kiln/io/safetensors.hpp>
#include <kiln/ops/linear.hpp>
#include <kiln/ops/norm.hpp>

#include "../support/torch_reference.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <unistd.h>

using kiln::index_t;
using kiln::Shape;
using kiln::Tensor;

namespace {

using Inputs = std::vector<Tensor<double>>;
using Fn = std::function<Tensor<double>(const Inputs&)>;

template <class T>
Tensor<T> rnd(const Shape& s, std::uint64_t seed, double scale = 1.0) {
  kiln::Rng rng(seed);
  return kiln::randn<T>(s, rng, T(0), static_cast<T>(scale));
}

void check_grad(const Fn& f, const Inputs& inputs, bool second_order = true) {
  const auto r = kiln::gradcheck(f, inputs);
  INFO(r.message);
  CHECK(r.ok);
  if (second_order) {
    const auto r2 = kiln::gradgradcheck(f, inputs);
    INFO(r2.message);
    CHECK(r2.ok);
  }
}

// max |a − b| / (1 + |b|) over all elements (same shapes required).
template <class A, class B>
double max_rel_error(const Tensor<A>& a, const Tensor<B>& b) {
  REQUIRE(a.shape() == b.shape());
  const auto va = a.to_vector();
  const auto vb = b.to_vector();
  double e = 0;
  for (std::size_t i = 0; i < va.size(); ++i)
    e = std::max(e, std::fabs(static_cast<double>(va[i]) - static_cast<double>(vb[i])) /
                        (1.0 + std::fabs(static_cast<double>(vb[i]))));
  return e;
}

// Layer norm of contiguous x seen as [rows, cols] by the definition, in double.
std::vector<double> naive_layer_norm(const std::vector<double>& x, index_t rows, index_t cols,
                                     const std::vector<double>& w, const std::vector<double>& b, double eps,
                                     bool rms = false) {
  std::vector<double> y(x.size());
  for (index_t r = 0; r < rows; ++r) {
    double mean = 0, sq = 0;
    for (index_t c = 0; c < cols; ++c) mean += x[static_cast<std::size_t>(r * cols + c)];
    mean = rms ? 0.0 : mean / static_cast<double>(cols);
    for (index_t c = 0; c < cols; ++c) {
      const double d = x[static_cast<std::size_t>(r * cols + c)] - mean;
      sq += d * d;
    }
    const double rstd = 1.0 / std::sqrt(sq / static_cast<double>(cols) + eps);
    for (index_t c = 0; c < cols; ++c) {
      const std::size_t i = static_cast<std::size_t>(r * cols + c);
      y[i] = (x[i] - mean) * rstd * (w.empty() ? 1.0 : w[static_cast<std::size_t>(c)]) +
             (b.empty() ? 0.0 : b[static_cast<std::size_t>(c)]);
    }
  }
  return y;
}

template <class T>
std::vector<double> as_doubles(const Tensor<T>& t) {
  const auto v = t.to_vector();
  return std::vector<double>(v.begin(), v.end());
}

void check_values(const Tensor<float>& got, const std::vector<double>& want, double tol) {
  const auto g = got.to_vector();
  REQUIRE(g.size() == want.size());
  double e = 0;
  for (std::size_t i = 0; i < g.size(); ++i)
    e = std::max(e, std::fabs(static_cast<double>(g[i]) - want[i]) / (1.0 + std::fabs(want[i])));
  CHECK(e <= tol);
}

// --- PyTorch cross-check (tests/torch/norm_reference.py) ----------------------------------------

// One case: inputs by name, the differentiated ones, and what kiln computed.
struct TorchCase {
  std::string name;
  std::string description;  // "op=... key=value ..."
  std::vector<std::pair<std::string, Tensor<float>>> tensors;
  Tensor<float> out;
  std::map<std::string, Tensor<float>> grads;
  std::map<std::string, Tensor<float>> running;  // batch norm statistics after the update
};

using CaseFn = std::function<Tensor<float>(const std::map<std::string, Tensor<float>>&)>;

// Runs f on the inputs (the names in `grads` tracked), seeds the output with random values and
// keeps kiln's output and gradients of sum(out · seed).
TorchCase make_case(const std::string& name, const std::string& description,
                    const std::vector<std::pair<std::string, Tensor<float>>>& inputs,
                    const std::vector<std::string>& grads, const CaseFn& f, std::uint64_t seed) {
  TorchCase c;
  c.name = name;
  std::string grad_list;
  for (const auto& g : grads) grad_list += (grad_list.empty() ? "" : ",") + g;
  c.description = description + " grads=" + grad_list;
  std::map<std::string, Tensor<float>> leaves;
  std::vector<Tensor<float>> wrt;
  for (const auto& [key, value] : inputs) {
    c.tensors.emplace_back(key, value.contiguous().clone());
    Tensor<float> leaf = value.clone();
    if (std::find(grads.begin(), grads.end(), key) != grads.end()) {
      leaf = value.detach().clone().requires_grad();
      wrt.push_back(leaf);
    }
    leaves.emplace(key, leaf);
  }
  c.out = f(leaves);
  const Tensor<float> s = rnd<float>(c.out.shape(), seed);
  c.tensors.emplace_back("seed", s);
  if (!wrt.empty()) {
    const auto g = kiln::grad({c.out}, wrt, {s}, false, false, true);
    for (std::size_t i = 0; i < grads.size(); ++i) c.grads[grads[i]] = g[i].defined() ? g[i] : Tensor<float>(wrt[i].shape());
  }
  c.out = c.out.detach();
  return c;
}

// Writes the cases, runs the PyTorch script and compares outputs, gradients and running
// statistics within float32 tolerance.
void check_with_torch(const std::vector<TorchCase>& cases, const std::string& tag, double tol = 2e-4) {
  namespace fs = std::filesystem;
  const std::string stem = (fs::temp_directory_path() / ("kiln_norm_" + tag + "_" + std::to_string(::getpid()))).string();
  const std::string in = stem + "_in.safetensors", out = stem + "_out.safetensors";
  std::vector<std::pair<std::string, Tensor<float>>> entries;
  std::map<std::string, std::string> metadata;
  for (const auto& c : cases) {
    metadata[c.name] = c.description;
    for (const auto& [key, t] : c.tensors) entries.emplace_back(c.name + "/" + key, t);
  }
  kiln::io::save_safetensors(in, entries, metadata, kiln::io::DType::F32);
  const int status = kiln::test::run_torch_script("norm_reference.py",
                                                  kiln::test::shell_quote(in) + " " + kiln::test::shell_quote(out));
  fs::remove(in);
  REQUIRE_MESSAGE(status == 0, "the PyTorch reference script failed (see its output above)");
  const kiln::io::SafeTensorsFile ref(out);
  fs::remove(out);
  auto compare = [&](const std::string& key, const Tensor<float>& mine) {
    INFO("PyTorch comparison of " << key);
    REQUIRE(ref.contains(key));
    const Tensor<double> theirs = ref.get<double>(key);
    REQUIRE(theirs.shape() == mine.shape());
    CHECK(max_rel_error(mine, theirs) <= tol);
  };
  for (const auto& c : cases) {
    compare(c.name + "/out", c.out);
    for (const auto& [key, g] : c.grads) compare(c.name + "/grad/" + key, g);
    for (const auto& [key, r] : c.running) compare(c.name + "/" + key, r);
  }
}

}  // namespace

// ==================================================================================== layer norm

TEST_CASE("layer_norm by hand") {
  // x = [1, 2, 3]: mean 2, biased var 2/3, so y = (x − 2) / sqrt(2/3 + eps).
  const auto x = kiln::from_vector<float>({1, 2, 3}, Shape{1, 3});
  const double r = 1.0 / std::sqrt(2.0 / 3.0 + 1e-5);
  check_values(kiln::layer_norm(x, Shape{3}), {-r, 0.0, r}, 1e-6);
  // With weight [1, 2, 3] and bias [0, 1, −1].
  const auto w = kiln::from_vector<float>({1, 2, 3});
  const auto b = kiln::from_vector<float>({0, 1, -1});
  check_values(kiln::layer_norm(x, Shape{3}, w, b), {-r, 1.0, 3 * r - 1}, 1e-6);
  // Weight only, bias only.
  check_values(kiln::layer_norm(x, Shape{3}, w), {-r, 0.0, 3 * r}, 1e-6);
  check_values(kiln::layer_norm(x, Shape{3}, Tensor<float>(), b), {-r, 1.0, r - 1}, 1e-6);
}

TEST_CASE("layer_norm forward against a double loop, strided inputs, several trailing dims") {
  const auto base = rnd<float>({4, 6, 5}, 1, 3.0);
  const auto w = rnd<float>({6, 5}, 2), b = rnd<float>({6, 5}, 3);
  const auto want = naive_layer_norm(as_doubles(base), 4, 30, as_doubles(w), as_doubles(b), 1e-5);
  check_values(kiln::layer_norm(base, Shape{6, 5}, w, b), want, 2e-6);
  // The same values as a permuted (non-contiguous) view, and weight given as a transposed view.
  const auto permuted = base.permute({1, 0, 2}).contiguous().permute({1, 0, 2});
  CHECK(!base.permute({1, 0, 2}).is_contiguous());
  check_values(kiln::layer_norm(permuted, Shape{6, 5}, w.t().contiguous().t(), b), want, 2e-6);
  // A large mean does not cost precision (two-pass statistics).
  const auto shifted = Tensor<float>(base + 1000.0f);
  check_values(kiln::layer_norm(shifted, Shape{6, 5}, w, b),
               naive_layer_norm(as_doubles(shifted), 4, 30, as_doubles(w), as_doubles(b), 1e-5), 2e-3);
  // The composed path (used on other devices) agrees with the fused kernel.
  CHECK(max_rel_error(kiln::detail::layer_norm_composed(base, 4, 30, w, b, 1e-5f),
                      kiln::layer_norm(base, Shape{6, 5}, w, b)) <= 1e-5);
}

TEST_CASE("layer_norm gradcheck and gradgradcheck") {
  SUBCASE("affine") {
    check_grad([](const Inputs& v) { return kiln::layer_norm(v[0], Shape{5}, v[1], v[2]); },
               {rnd<double>({3, 5}, 1), rnd<double>({5}, 2), rnd<double>({5}, 3)});
  }
  SUBCASE("no affine, two normalized dims, 3-d input") {
    check_grad([](const Inputs& v) { return kiln::layer_norm(v[0], Shape{2, 3}); }, {rnd<double>({2, 2, 3}, 4)});
  }
  SUBCASE("weight only, bias only") {
    check_grad([](const Inputs& v) { return kiln::layer_norm(v[0], Shape{4}, v[1]); },
               {rnd<double>({3, 4}, 5), rnd<double>({4}, 6)});
    check_grad([](const Inputs& v) { return kiln::layer_norm(v[0], Shape{4}, Tensor<double>(), v[1]); },
               {rnd<double>({3, 4}, 7), rnd<double>({4}, 8)});
  }
  SUBCASE("strided input and weight") {
    check_grad([](const Inputs& v) { return kiln::layer_norm(v[0].t(), Shape{3}, v[1].slice(0, 0, 6, 2), v[2]); },
               {rnd<double>({3, 4}, 9), rnd<double>({6}, 10), rnd<double>({3}, 11)});
  }
  SUBCASE("size-1 dims") {
    check_grad([](const Inputs& v) { return kiln::layer_norm(v[0], Shape{1, 4}, v[1], v[2]); },
               {rnd<double>({1, 1, 4}, 12), rnd<double>({1, 4}, 13), rnd<double>({1, 4}, 14)});
    // One element per row: y = bias, no gradient reaches x.
    check_grad([](const Inputs& v) { return kiln::layer_norm(v[0], Shape{1}, v[1], v[2]); },
               {rnd<double>({3, 1}, 15), rnd<double>({1}, 16), rnd<double>({1}, 17)});
  }
}

// ====================================================================================== RMS norm

TEST_CASE("rms_norm by hand, against a double loop, and its default eps") {
  // x = [3, 4]: mean(x²) = 12.5.
  const auto x = kiln::from_vector<float>({3, 4}, Shape{1, 2});
  const double r = 1.0 / std::sqrt(12.5 + 1e-6);
  check_values(kiln::rms_norm(x, Tensor<float>(), 1e-6), {3 * r, 4 * r}, 1e-6);
  const auto w = kiln::from_vector<float>({2, -1});
  check_values(kiln::rms_norm(x, w, 1e-6), {6 * r, -4 * r}, 1e-6);
  // eps = nullopt is the machine epsilon of T, as PyTorch's eps=None: tiny inputs show it.
  const auto tiny = kiln::from_vector<float>({1e-4f, 1e-4f}, Shape{1, 2});
  const double fe = static_cast<double>(std::numeric_limits<float>::epsilon());
  check_values(kiln::rms_norm(tiny, Tensor<float>()), {1e-4 / std::sqrt(1e-8 + fe), 1e-4 / std::sqrt(1e-8 + fe)}, 1e-5);

  const auto base = rnd<float>({5, 3, 4}, 3);
  const auto w2 = rnd<float>({3, 4}, 4);
  const auto want = naive_layer_norm(as_doubles(base), 5, 12, as_doubles(w2), {}, 1e-5, true);
  check_values(kiln::rms_norm(base, Shape{3, 4}, w2, 1e-5), want, 2e-6);
  check_values(kiln::rms_norm(base, w2, 1e-5), want, 2e-6);  // normalized over weight's dims
  check_values(kiln::rms_norm(base.transpose(0, 1).contiguous().transpose(0, 1), w2, 1e-5), want, 2e-6);
  CHECK(max_rel_error(kiln::detail::rms_norm_composed(base, 5, 12, w2, 1e-5f), kiln::rms_norm(base, w2, 1e-5)) <=
        1e-5);
}

TEST_CASE("rms_norm gradcheck and gradgradcheck") {
  check_grad([](const Inputs& v) { return kiln::rms_norm(v[0], v[1], 1e-5); }, {rnd<double>({3, 4}, 1), rnd<double>({4}, 2)});
  check_grad([](const Inputs& v) { return kiln::rms_norm(v[0], Tensor<double>(), 1e-5); }, {rnd<double>({2, 3, 2}, 3)});
  check_grad([](const Inputs& v) { return kiln::rms_norm(v[0].permute({2, 0, 1}), Shape{2, 3}, v[1].t(), 1e-5); },
             {rnd<double>({2, 3, 2}, 4), rnd<double>({3, 2}, 5)});
  check_grad([](const Inputs& v) { return kiln::rms_norm(v[0], v[1], 1e-5); }, {rnd<double>({1, 1}, 6), rnd<double>({1}, 7)});
}

// ==================================================================================== group norm

// Group norm of x [N, C, HW] by the definition, in double.
std::vector<double> naive_group_norm(const std::vector<double>& x, index_t N, index_t C, index_t HW, index_t G,
                                     const std::vector<double>& w, const std::vector<double>& b, double eps) {
  std::vector<double> y(x.size());
  const index_t Cg = C / G, M = Cg * HW;
  for (index_t n = 0; n < N; ++n)
    for (index_t g = 0; g < G; ++g) {
      const std::size_t off = static_cast<std::size_t>((n * C + g * Cg) * HW);
      double mean = 0, sq = 0;
      for (index_t i = 0; i < M; ++i) mean += x[off + static_cast<std::size_t>(i)];
      mean /= static_cast<double>(M);
      for (index_t i = 0; i < M; ++i) sq += (x[off + static_cast<std::size_t>(i)] - mean) * (x[off + static_cast<std::size_t>(i)] - mean);
      const double rstd = 1.0 / std::sqrt(sq / static_cast<double>(M) + eps);
      for (index_t i = 0; i < M; ++i) {
        const std::size_t c = static_cast<std::size_t>(g * Cg + i / HW);
        y[off + static_cast<std::size_t>(i)] =
            (x[off + static_cast<std::size_t>(i)] - mean) * rstd * (w.empty() ? 1.0 : w[c]) + (b.empty() ? 0.0 : b[c]);
      }
    }
  return y;
}

TEST_CASE("group_norm forward against a double loop, strided input, 2-d and 4-d inputs") {
  const auto x = rnd<float>({2, 6, 3, 2}, 1, 2.0);
  const auto w = rnd<float>({6}, 2), b = rnd<float>({6}, 3);
  const auto want = naive_group_norm(as_doubles(x), 2, 6, 6, 3, as_doubles(w), as_doubles(b), 1e-5);
  check_values(kiln::group_norm(x, 3, w, b), want, 2e-6);
  check_values(kiln::group_norm(x.permute({0, 2, 3, 1}).contiguous().permute({0, 3, 1, 2}), 3, w, b), want, 2e-6);
  // [N, C]: each group is C/G values of one sample.
  const auto x2 = rnd<float>({3, 4}, 4);
  check_values(kiln::group_norm(x2, 2), naive_group_norm(as_doubles(x2), 3, 4, 1, 2, {}, {}, 1e-5), 2e-6);
  CHECK(max_rel_error(kiln::detail::group_norm_composed(x, 2, 6, 6, 3, w, b, 1e-5f), kiln::group_norm(x, 3, w, b)) <=
        1e-5);
  // groups = 1 is a layer norm over [C, *]; groups = C an instance norm.
  CHECK(max_rel_error(kiln::group_norm(x, 1), kiln::layer_norm(x, Shape{6, 3, 2})) <= 1e-6);
}

TEST_CASE("group_norm gradcheck and gradgradcheck") {
  check_grad([](const Inputs& v) { return kiln::group_norm(v[0], 2, v[1], v[2]); },
             {rnd<double>({2, 4, 3}, 1), rnd<double>({4}, 2), rnd<double>({4}, 3)});
  check_grad([](const Inputs& v) { return kiln::group_norm(v[0], 3); }, {rnd<double>({2, 3, 2, 2}, 4)});
  check_grad([](const Inputs& v) { return kiln::group_norm(v[0].transpose(1, 2), 2, v[1]); },
             {rnd<double>({2, 3, 4}, 5), rnd<double>({4}, 6)});
  check_grad([](const Inputs& v) { return kiln::group_norm(v[0], 1, v[1], v[2]); },
             {rnd<double>({1, 2, 1}, 7), rnd<double>({2}, 8), rnd<double>({2}, 9)});
}

// ==================================================================================== batch norm

TEST_CASE("batch_norm training by hand: output and running statistics (unbiased variance)") {
  // Channel 0: 1, 2, 3, 6 (mean 3, biased var 14/4, unbiased 14/3);
  // channel 1: 10, 20, 30, 40 (mean 25, biased var 500/4, unbiased 500/3).
  const auto x = kiln::from_vector<float>({1, 10, 2, 20, 3, 30, 6, 40}, Shape{4, 2});
  auto rm = kiln::zeros<float>(Shape{2});
  auto rv = kiln::ones<float>(Shape{2});
  const auto y = kiln::batch_norm(x, rm, rv, Tensor<float>(), Tensor<float>(), true, 0.1, 1e-5);
  const double r0 = 1.0 / std::sqrt(3.5 + 1e-5), r1 = 1.0 / std::sqrt(125.0 + 1e-5);
  check_values(y, {-2 * r0, -15 * r1, -1 * r0, -5 * r1, 0, 5 * r1, 3 * r0, 15 * r1}, 1e-6);
  check_values(rm, {0.3, 2.5}, 1e-6);
  check_values(rv, {0.9 + 0.1 * 14.0 / 3.0, 0.9 + 0.1 * 500.0 / 3.0}, 1e-6);
  // A second step moves the statistics again from their new values.
  kiln::batch_norm(x, rm, rv, Tensor<float>(), Tensor<float>(), true, 0.5, 1e-5);
  check_values(rm, {0.5 * 0.3 + 0.5 * 3, 0.5 * 2.5 + 0.5 * 25}, 1e-6);

  // [N, C, HW]: the statistics pool the batch and the positions. Channel 0 holds 0, 1 | 2, 3
  // (mean 1.5, biased var 1.25, unbiased 5/3), channel 1 holds 5, 7 | 5, 7 (mean 6, biased var 1,
  // unbiased 4/3).
  const auto x3 = kiln::from_vector<float>({0, 1, 5, 7, 2, 3, 5, 7}, Shape{2, 2, 2});
  auto rm3 = kiln::zeros<float>(Shape{2});
  auto rv3 = kiln::ones<float>(Shape{2});
  const auto w = kiln::from_vector<float>({2, 3});
  const auto b = kiln::from_vector<float>({1, -1});
  const auto y3 = kiln::batch_norm(x3, rm3, rv3, w, b, true, 1.0, 0.0);
  const double s = 1.0 / std::sqrt(1.25);
  check_values(y3, {2 * (-1.5 * s) + 1, 2 * (-0.5 * s) + 1, -3 - 1, 3 - 1, 2 * (0.5 * s) + 1, 2 * (1.5 * s) + 1, -3 - 1,
                    3 - 1},
               1e-6);
  check_values(rm3, {1.5, 6.0}, 1e-6);              // momentum 1: the batch statistics themselves
  check_values(rv3, {5.0 / 3.0, 4.0 / 3.0}, 1e-6);  // unbiased
}

TEST_CASE("batch_norm running statistics held in strided views, and evaluation mode") {
  auto rm_storage = kiln::full<float>(Shape{4}, 7.0f);
  auto rv_storage = kiln::full<float>(Shape{4}, 7.0f);
  auto rm = rm_storage.slice(0, 0, 4, 2);  // elements 0 and 2
  auto rv = rv_storage.slice(0, 1, 4, 2);  // elements 1 and 3
  rm.fill_(0.0f);
  rv.fill_(1.0f);
  const auto x = kiln::from_vector<float>({1, 10, 2, 20, 3, 30, 6, 40}, Shape{4, 2});
  kiln::batch_norm(x, rm, rv, Tensor<float>(), Tensor<float>(), true, 0.1, 1e-5);
  check_values(rm_storage, {0.3, 7.0, 2.5, 7.0}, 1e-6);
  check_values(rv_storage, {7.0, 0.9 + 0.1 * 14.0 / 3.0, 7.0, 0.9 + 0.1 * 500.0 / 3.0}, 1e-6);

  // Evaluation: (x − running_mean) / sqrt(running_var + eps) · w + b; the statistics stay.
  const auto m = kiln::from_vector<float>({1, 2});
  const auto var = kiln::from_vector<float>({4, 9});
  const auto w = kiln::from_vector<float>({2, 3});
  const auto b = kiln::from_vector<float>({0.5f, -0.5f});
  const auto xe = kiln::from_vector<float>({3, 5, -1, 2}, Shape{2, 2});
  const auto y = kiln::batch_norm(xe, m, var, w, b, false, 0.1, 0.0);
  check_values(y, {(3 - 1) / 2.0 * 2 + 0.5, (5 - 2) / 3.0 * 3 - 0.5, (-1 - 1) / 2.0 * 2 + 0.5, (2 - 2) / 3.0 * 3 - 0.5},
               1e-6);
  check_values(m, {1, 2}, 0);
  check_values(var, {4, 9}, 0);
  // Training without running statistics is fine; composed and fused paths agree.
  const auto x4 = rnd<float>({3, 4, 2, 2}, 5);
  const auto w4 = rnd<float>({4}, 6), b4 = rnd<float>({4}, 7);
  auto ra = kiln::zeros<float>(Shape{4}), rb = kiln::ones<float>(Shape{4});
  auto ca = kiln::zeros<float>(Shape{4}), cb = kiln::ones<float>(Shape{4});
  const auto fused = kiln::batch_norm(x4, ra, rb, w4, b4, true, 0.2, 1e-5);
  const auto composed = kiln::detail::batch_norm_composed(x4, 3, 4, 4, ca, cb, w4, b4, true, 0.2, 1e-5f);
  CHECK(max_rel_error(composed, fused) <= 1e-5);
  CHECK(max_rel_error(ca, ra) <= 1e-6);
  CHECK(max_rel_error(cb, rb) <= 1e-6);
  CHECK(max_rel_error(kiln::detail::batch_norm_composed(x4, 3, 4, 4, ra, rb, w4, b4, false, 0.2, 1e-5f),
                      kiln::batch_norm(x4, ra, rb, w4, b4, false, 0.2, 1e-5)) <= 1e-5);
}

TEST_CASE("batch_norm gradcheck and gradgradcheck, training and evaluation") {
  SUBCASE("training, [N, C], affine, with running statistics") {
    auto rm = kiln::zeros<double>(Shape{3});
    auto rv = kiln::ones<double>(Shape{3});
    check_grad([rm, rv](const Inputs& v) { return kiln::batch_norm(v[0], rm, rv, v[1], v[2], true); },
               {rnd<double>({4, 3}, 1), rnd<double>({3}, 2), rnd<double>({3}, 3)});
  }
  SUBCASE("training, [N, C, H, W], no affine, strided input") {
    check_grad([](const Inputs& v) {
      return kiln::batch_norm(v[0].permute({0, 3, 1, 2}), Tensor<double>(), Tensor<double>(), Tensor<double>(),
                              Tensor<double>(), true);
    }, {rnd<double>({2, 2, 2, 3}, 4)});
  }
  SUBCASE("training, size-1 dims: N = 1 with positions, and C = 1") {
    check_grad([](const Inputs& v) {
      return kiln::batch_norm(v[0], Tensor<double>(), Tensor<double>(), v[1], v[2], true);
    }, {rnd<double>({1, 2, 3}, 5), rnd<double>({2}, 6), rnd<double>({2}, 7)});
    check_grad([](const Inputs& v) {
      return kiln::batch_norm(v[0], Tensor<double>(), Tensor<double>(), v[1], Tensor<double>(), true);
    }, {rnd<double>({3, 1}, 8), rnd<double>({1}, 9)});
  }
  SUBCASE("evaluation") {
    const auto rm = rnd<double>({3}, 10);
    const auto rv = Tensor<double>(kiln::exp(rnd<double>({3}, 11)));
    check_grad([rm, rv](const Inputs& v) { return kiln::batch_norm(v[0], rm, rv, v[1], v[2], false); },
               {rnd<double>({2, 3, 2}, 12), rnd<double>({3}, 13), rnd<double>({3}, 14)});
  }
}

// ============================================================================ gradients, both ways

TEST_CASE("plain (fused kernel) and create_graph (composed) gradients agree; unneeded ones are skipped") {
  const auto x = rnd<float>({4, 6, 3}, 1);
  const auto w = rnd<float>({6}, 2), b = rnd<float>({6}, 3);
  const auto gy = rnd<float>({4, 6, 3}, 4);
  using Op = std::function<Tensor<float>(const Tensor<float>&, const Tensor<float>&, const Tensor<float>&)>;
  const std::vector<std::pair<const char*, Op>> ops = {
      {"layer_norm", [](const auto& a, const auto& c, const auto& d) {
         return kiln::layer_norm(a.transpose(1, 2), Shape{6}, c, d);
       }},
      {"rms_norm", [](const auto& a, const auto& c, const auto&) { return kiln::rms_norm(a.transpose(1, 2), c, 1e-5); }},
      {"group_norm", [](const auto& a, const auto& c, const auto& d) { return kiln::group_norm(a, 3, c, d); }},
      {"batch_norm", [](const auto& a, const auto& c, const auto& d) {
         return kiln::batch_norm(a, Tensor<float>(), Tensor<float>(), c, d, true);
       }},
  };
  for (const auto& [name, op] : ops) {
    const std::string op_name = name;
    INFO(op_name);
    auto xl = x.clone().requires_grad(), wl = w.clone().requires_grad(), bl = b.clone().requires_grad();
    const bool has_bias = std::string(name) != "rms_norm";
    std::vector<Tensor<float>> wrt{xl, wl};
    if (has_bias) wrt.push_back(bl);
    auto y = op(xl, wl, bl);
    const Tensor<float> seed = y.shape() == gy.shape() ? gy : gy.transpose(1, 2).contiguous();
    const auto plain = kiln::grad({y}, wrt, {seed}, false, false, true);
    y = op(xl, wl, bl);
    const auto composed = kiln::grad({y}, wrt, {seed}, false, true, true);
    for (std::size_t i = 0; i < wrt.size(); ++i) {
      REQUIRE(plain[i].defined());
      CHECK(!plain[i].tracks_grad());
      // The gradients of x and the weight depend on x again; the bias's (Σ g) does not.
      if (i < 2) CHECK(composed[i].tracks_grad());
      CHECK(max_rel_error(plain[i], composed[i].detach()) <= 1e-4);
    }
    // Only the weight tracked: the input's gradient is never formed, the weight's is the same.
    auto w_only = w.clone().requires_grad();
    auto y2 = op(x, w_only, b);
    const auto gw = kiln::grad<float, kiln::cpu>({y2}, {w_only}, {seed});
    CHECK(max_rel_error(gw[0], plain[1]) <= 1e-6);
  }
}

TEST_CASE("empty inputs give empty outputs and zero parameter gradients") {
  auto x = Tensor<float>(Shape{0, 4}).requires_grad();
  auto w = kiln::ones<float>(Shape{4}).requires_grad();
  auto b = kiln::zeros<float>(Shape{4}).requires_grad();
  const auto y = kiln::layer_norm(x, Shape{4}, w, b);
  CHECK(y.shape() == Shape{0, 4});
  const auto g = kiln::grad<float, kiln::cpu>({y}, {x, w, b}, {Tensor<float>(Shape{0, 4})});
  CHECK(g[0].shape() == Shape{0, 4});
  check_values(g[1], {0, 0, 0, 0}, 0);
  check_values(g[2], {0, 0, 0, 0}, 0);
  auto xg = Tensor<float>(Shape{2, 4, 0}).requires_grad();
  const auto yg = kiln::group_norm(xg, 2, w, b);
  CHECK(yg.shape() == Shape{2, 4, 0});
  CHECK(kiln::grad<float, kiln::cpu>({yg}, {w}, {Tensor<float>(Shape{2, 4, 0})})[0].to_vector() == std::vector<float>(4, 0.0f));
}

TEST_CASE("errors name the op and the shapes") {
  const auto x = rnd<float>({2, 3}, 1);
  CHECK_THROWS_WITH_AS(kiln::layer_norm(x, Shape{2}), doctest::Contains("shapes [2, 3] and [2]"), kiln::ShapeError);
  CHECK_THROWS_WITH_AS(kiln::layer_norm(x, Shape{3}, kiln::ones<float>(Shape{2})),
                       doctest::Contains("weight must have shape [3]"), kiln::ShapeError);
  CHECK_THROWS_AS(kiln::layer_norm(x, Shape{3}, Tensor<float>(), Tensor<float>(), -1.0), kiln::ValueError);
  CHECK_THROWS_WITH_AS(kiln::group_norm(x, 2), doctest::Contains("divisible by the number of groups 2"),
                       kiln::ValueError);
  CHECK_THROWS_AS(kiln::group_norm(rnd<float>({3}, 1), 1), kiln::ShapeError);
  CHECK_THROWS_WITH_AS(kiln::batch_norm(rnd<float>({1, 3}, 1), Tensor<float>(), Tensor<float>(), Tensor<float>(),
                                        Tensor<float>(), true),
                       doctest::Contains("more than 1 value per channel"), kiln::ValueError);
  CHECK_THROWS_WITH_AS(kiln::batch_norm(x, Tensor<float>(), Tensor<float>()), doctest::Contains("running_mean"),
                       kiln::ValueError);
  CHECK_THROWS_WITH_AS(kiln::batch_norm(x, kiln::zeros<float>(Shape{2}), kiln::ones<float>(Shape{3})),
                       doctest::Contains("running_mean must have shape [3]"), kiln::ShapeError);
  CHECK_THROWS_AS(kiln::rms_norm(x, kiln::ones<float>(Shape{2})), kiln::ShapeError);
}

// ====================================================================== double backward in use

TEST_CASE("gradient penalty through a discriminator with norms (gradgradcheck of the whole network)") {
  // D(x) = linear(leaky_relu(norm(linear(x, W1, b1))), W2); gradgradcheck differentiates
  // Σ ∂L/∂(x, W1, b1, γ, β, W2) · s again, which is what a gradient penalty's backward does.
  auto discriminator = [](int kind) {
    return [kind](const Inputs& v) {
      Tensor<double> h = kiln::linear(v[0], v[1], v[2]);
      if (kind == 0) h = kiln::layer_norm(h, Shape{4}, v[3], v[4]);
      if (kind == 1) h = kiln::group_norm(h, 2, v[3], v[4]);
      if (kind == 2) h = kiln::batch_norm(h, Tensor<double>(), Tensor<double>(), v[3], v[4], true);
      h = Tensor<double>(kiln::leaky_relu(h, 0.2));
      return kiln::linear(h, v[5]);
    };
  };
  const Inputs inputs{rnd<double>({3, 3}, 1), rnd<double>({4, 3}, 2), rnd<double>({4}, 3),
                      rnd<double>({4}, 4),    rnd<double>({4}, 5),    rnd<double>({1, 4}, 6)};
  for (int kind = 0; kind < 3; ++kind) {
    INFO("norm kind " << kind);
    const auto r = kiln::gradgradcheck(discriminator(kind), inputs);
    INFO(r.message);
    CHECK(r.ok);
  }
  // The R1-style penalty ‖∂D/∂x‖² is itself trainable: its gradient reaches the norm's weight.
  auto x = rnd<double>({3, 3}, 7).requires_grad();
  auto w1 = rnd<double>({4, 3}, 8).requires_grad();
  auto gamma = rnd<double>({4}, 9).requires_grad();
  auto w2 = rnd<double>({1, 4}, 10).requires_grad();
  const auto d = kiln::linear(Tensor<double>(kiln::tanh(kiln::layer_norm(kiln::linear(x, w1), Shape{4}, gamma))), w2);
  const auto gx = kiln::grad<double, kiln::cpu>({d}, {x}, {kiln::ones<double>(d.shape())}, true, true)[0];
  const auto penalty = kiln::sum(Tensor<double>(gx * gx));
  const auto g_gamma = kiln::grad<double, kiln::cpu>({penalty}, {gamma})[0];
  REQUIRE(g_gamma.defined());
  // Finite differences of the penalty along gamma.
  auto penalty_at = [&](const Tensor<double>& gm) {
    auto xx = x.detach().clone().requires_grad();
    const auto dd = kiln::linear(Tensor<double>(kiln::tanh(kiln::layer_norm(kiln::linear(xx, w1.detach()), Shape{4}, gm))),
                                 w2.detach());
    const auto g = kiln::grad<double, kiln::cpu>({dd}, {xx}, {kiln::ones<double>(dd.shape())})[0];
    return kiln::sum(Tensor<double>(g * g)).item();
  };
  for (index_t i = 0; i < 4; ++i) {
    auto up = gamma.detach().clone(), down = gamma.detach().clone();
    up.data()[i] += 1e-6;
    down.data()[i] -= 1e-6;
    CHECK(g_gamma.data()[i] == doctest::Approx((penalty_at(up) - penalty_at(down)) / 2e-6).epsilon(1e-5));
  }
}

// ===================================================================================== PyTorch

TEST_CASE("outputs, gradients and running statistics match PyTorch") {
  std::vector<TorchCase> cases;
  using M = std::map<std::string, Tensor<float>>;
  cases.push_back(make_case("ln_affine", "op=layer_norm normalized_shape=5 eps=1e-5",
                            {{"x", rnd<float>({3, 4, 5}, 1, 2.0)}, {"weight", rnd<float>({5}, 2)}, {"bias", rnd<float>({5}, 3)}},
                            {"x", "weight", "bias"},
                            [](const M& a) { return kiln::layer_norm(a.at("x"), Shape{5}, a.at("weight"), a.at("bias")); }, 4));
  cases.push_back(make_case("ln_plain_2d", "op=layer_norm normalized_shape=3,4 eps=1e-3",
                            {{"x", rnd<float>({2, 3, 4}, 5)}}, {"x"},
                            [](const M& a) { return kiln::layer_norm(a.at("x").transpose(0, 1).contiguous().transpose(0, 1), Shape{3, 4}, Tensor<float>(), Tensor<float>(), 1e-3); }, 6));
  cases.push_back(make_case("rms_affine", "op=rms_norm normalized_shape=6 eps=1e-6",
                            {{"x", rnd<float>({4, 6}, 7)}, {"weight", rnd<float>({6}, 8)}}, {"x", "weight"},
                            [](const M& a) { return kiln::rms_norm(a.at("x"), a.at("weight"), 1e-6); }, 9));
  cases.push_back(make_case("rms_plain", "op=rms_norm normalized_shape=2,3 eps=1e-5",
                            {{"x", rnd<float>({3, 2, 3}, 10)}}, {"x"},
                            [](const M& a) { return kiln::rms_norm(a.at("x"), Shape{2, 3}, Tensor<float>(), 1e-5); }, 11));
  cases.push_back(make_case("gn_affine", "op=group_norm groups=2 eps=1e-5",
                            {{"x", rnd<float>({2, 4, 3, 2}, 12)}, {"weight", rnd<float>({4}, 13)}, {"bias", rnd<float>({4}, 14)}},
                            {"x", "weight", "bias"},
                            [](const M& a) { return kiln::group_norm(a.at("x"), 2, a.at("weight"), a.at("bias")); }, 15));
  cases.push_back(make_case("gn_plain", "op=group_norm groups=3 eps=1e-5", {{"x", rnd<float>({3, 6}, 16)}}, {"x"},
                            [](const M& a) { return kiln::group_norm(a.at("x"), 3); }, 17));
  for (int training = 0; training < 2; ++training) {
    const std::string name = training ? "bn_train" : "bn_eval";
    const auto x = rnd<float>({4, 3, 2, 2}, 18 + training);
    const auto w = rnd<float>({3}, 20), b = rnd<float>({3}, 21);
    const auto rm0 = rnd<float>({3}, 22), rv0 = Tensor<float>(kiln::exp(rnd<float>({3}, 23)));
    auto rm = rm0.clone(), rv = rv0.clone();
    TorchCase c = make_case(name, std::string("op=batch_norm momentum=0.3 eps=1e-5 training=") + (training ? "1" : "0"),
                            {{"x", x}, {"weight", w}, {"bias", b}}, {"x", "weight", "bias"},
                            [&](const M& a) {
                              return kiln::batch_norm(a.at("x"), rm, rv, a.at("weight"), a.at("bias"), training == 1, 0.3);
                            },
                            24);
    c.tensors.emplace_back("running_mean", rm0);
    c.tensors.emplace_back("running_var", rv0);
    c.running["running_mean"] = rm;
    c.running["running_var"] = rv;
    cases.push_back(c);
  }
  cases.push_back(make_case("bn_1d_noaffine", "op=batch_norm training=1 eps=1e-5", {{"x", rnd<float>({5, 3}, 25, 3.0)}}, {"x"},
                            [](const M& a) {
                              return kiln::batch_norm(a.at("x"), Tensor<float>(), Tensor<float>(), Tensor<float>(), Tensor<float>(), true);
                            },
                            26));
  check_with_torch(cases, "ops");
}
