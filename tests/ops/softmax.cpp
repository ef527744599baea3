// Tests of include/kiln/ops/softmax.hpp: hand values, stability at extreme logits, every axis
// against a double loop (contiguous and strided inputs), gradcheck and gradgradcheck in float64,
// errors, and a comparison of outputs and gradients with PyTorch (tests/torch/ops_reference.py).
#include <doctest/doctest.h>
#include <kiln/kiln.hpp>
// After kiln.hpp: gradcheck.hpp's inline functions need the CPU backend defined.
#include <kiln/autograd/gradcheck.hpp>
#include <kiln/ops/softmax.hpp>

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
using kiln::Shape;
using kiln::Tensor;

namespace {

using Inputs = std::vector<Tensor<double>>;

// Softmax (or log-softmax) along `axis` of a float tensor, in double by the definition.
std::vector<double> naive_softmax(const Tensor<float>& x, int axis, bool log) {
  const Tensor<float> c = x.contiguous();
  index_t outer = 1, inner = 1;
  const index_t n = c.size(axis);
  for (int d = 0; d < c.dim(); ++d) {
    if (d < axis) outer *= c.size(d);
    if (d > axis) inner *= c.size(d);
  }
  std::vector<double> out(static_cast<std::size_t>(c.numel()));
  for (index_t o = 0; o < outer; ++o)
    for (index_t i = 0; i < inner; ++i) {
      double m = -std::numeric_limits<double>::infinity();
      for (index_t r = 0; r < n; ++r) m = std::max(m, static_cast<double>(c.data()[(o * n + r) * inner + i]));
      double s = 0;
      for (index_t r = 0; r < n; ++r) s += std::exp(static_cast<double>(c.data()[(o * n + r) * inner + i]) - m);
      for (index_t r = 0; r < n; ++r) {
        const double z = static_cast<double>(c.data()[(o * n + r) * inner + i]) - m;
        out[static_cast<std::size_t>((o * n + r) * inner + i)] = log ? z - std::log(s) : std::exp(z) / s;
      }
    }
  return out;
}

void check_close(const Tensor<float>& got, const std::vector<double>& want, double tol) {
  const std::vector<float> g = got.to_vector();
  REQUIRE(g.size() == want.size());
  for (std::size_t i = 0; i < g.size(); ++i) CHECK(std::abs(static_cast<double>(g[i]) - want[i]) <= tol * (1 + std::abs(want[i])));
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
              const std::vector<IndexInput>& indices, const CaseFn& f) {
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
  for (const auto& in : indices) {
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

TEST_CASE("softmax and log_softmax by hand") {
  auto x = kiln::from_vector<float>({0, 0}, Shape{1, 2});
  CHECK(kiln::softmax(x, 1).to_vector() == std::vector<float>{0.5f, 0.5f});
  const std::vector<float> ls = kiln::log_softmax(x, 1).to_vector();
  CHECK(ls[0] == doctest::Approx(-std::log(2.0)));
  CHECK(ls[1] == doctest::Approx(-std::log(2.0)));
  // softmax([1, 2, 3]) = e^k / (e + e² + e³)
  auto y = kiln::softmax(kiln::from_vector<double>({1, 2, 3}), 0).to_vector();
  const double z = std::exp(1.0) + std::exp(2.0) + std::exp(3.0);
  for (int k = 0; k < 3; ++k) CHECK(y[static_cast<std::size_t>(k)] == doctest::Approx(std::exp(k + 1.0) / z).epsilon(1e-14));
  // log_softmax([0, log 3]) = [log 1/4, log 3/4]
  auto l = kiln::log_softmax(kiln::from_vector<double>({0, std::log(3.0)}), -1).to_vector();
  CHECK(l[0] == doctest::Approx(std::log(0.25)).epsilon(1e-14));
  CHECK(l[1] == doctest::Approx(std::log(0.75)).epsilon(1e-14));
  // a 0-d tensor is a row of one element
  Tensor<float> s(Shape{});
  s.fill_(3.0f);
  CHECK(kiln::softmax(s, 0).shape() == Shape{});
  CHECK(kiln::softmax(s, -1).item() == 1.0f);
  CHECK(kiln::log_softmax(s, 0).item() == 0.0f);
  // an expression is evaluated first
  CHECK(kiln::softmax(x * 2.0f, 1).to_vector() == std::vector<float>{0.5f, 0.5f});
}

TEST_CASE("stable at extreme logits: no overflow, small probabilities kept in log space") {
  auto big = kiln::from_vector<float>({1000, 1000, 1000, 1000, -1000, 0, 0, 0}, Shape{2, 4});
  const auto p = kiln::softmax(big, 1).to_vector();
  for (int k = 0; k < 4; ++k) CHECK(p[static_cast<std::size_t>(k)] == doctest::Approx(0.25f));
  CHECK(p[4] == 0.0f);
  CHECK(p[5] == doctest::Approx(1.0f / 3));
  const auto lp = kiln::log_softmax(big, 1).to_vector();
  CHECK(lp[4] == doctest::Approx(-1000.0f - std::log(3.0f)));  // log(softmax) would give −inf
  for (float v : lp) CHECK(std::isfinite(v));
  // −inf logits (masked positions) get probability 0 and a finite gradient; the same along axis 0
  const float inf = std::numeric_limits<float>::infinity();
  for (int axis : {0, 1}) {
    auto masked = kiln::from_vector<float>({0, -inf, 1, -inf}, Shape{2, 2});
    if (axis == 0) masked = masked.t().contiguous();
    masked.requires_grad();
    auto q = kiln::softmax(masked, axis);
    const auto qv = q.to_vector();
    CHECK(qv[axis == 1 ? 1u : 2u] == 0.0f);
    kiln::sum(q * q).backward();
    for (float g : masked.grad().to_vector()) CHECK(std::isfinite(g));
  }
}

TEST_CASE("every axis of 3-d tensors against a double loop, contiguous and strided inputs") {
  kiln::Rng rng(7);
  for (Shape shape : {Shape{3, 5, 17}, Shape{2, 1, 40}, Shape{4, 33, 2}, Shape{1, 1, 1}}) {
    auto x = kiln::randn<float>(shape, rng, 0.0f, 3.0f);
    for (int axis = 0; axis < 3; ++axis)
      for (bool log : {false, true}) {
        CAPTURE(axis);
        CAPTURE(log);
        const auto want = naive_softmax(x, axis, log);
        check_close(log ? kiln::log_softmax(x, axis) : kiln::softmax(x, axis), want, 1e-5);
      }
    // a transposed view gives the same values as its contiguous copy
    auto xt = x.transpose(0, 2);
    for (int axis = 0; axis < 3; ++axis) {
      check_close(kiln::softmax(xt, axis), naive_softmax(xt.contiguous(), axis, false), 1e-5);
      check_close(kiln::log_softmax(xt, axis), naive_softmax(xt.contiguous(), axis, true), 1e-5);
    }
  }
  // long rows (GPT vocabulary-sized): sums to 1
  auto wide = kiln::randn<float>({3, 50257}, rng, 0.0f, 4.0f);
  auto row_sums = kiln::sum(kiln::softmax(wide, 1), 1).to_vector();
  for (float s : row_sums) CHECK(s == doctest::Approx(1.0f).epsilon(1e-4));
  check_close(kiln::log_softmax(wide, -1), naive_softmax(wide, 1, true), 1e-5);
}

TEST_CASE("gradcheck: each axis, strided and sliced views, size-1 dims, 0-d, broadcast inputs") {
  kiln::Rng rng(11);
  auto x = kiln::randn<double>({3, 4, 5}, rng);
  for (int axis : {0, 1, 2, -1})
    for (bool log : {false, true}) {
      CAPTURE(axis);
      CAPTURE(log);
      auto f = [axis, log](const Inputs& in) {
        return log ? kiln::log_softmax(in[0], axis) : kiln::softmax(in[0], axis);
      };
      auto r = kiln::gradcheck(f, {x});
      CHECK_MESSAGE(r.ok, r.message);
    }
  // transposed and sliced views; a broadcast (expanded) input; an expression input
  auto views = [](const Inputs& in) {
    Tensor<double> a = kiln::softmax(in[0].transpose(0, 2), 1);
    Tensor<double> b = kiln::log_softmax(in[0].slice(2, 1, 5, 2), 2);
    Tensor<double> c = kiln::softmax(in[1].expand({3, 4, 5}), 0);
    Tensor<double> d = kiln::log_softmax(in[1] * in[1] + 1.0, 1);
    return Tensor<double>(kiln::sum(a * a) + kiln::sum(b * b) + kiln::sum(c * c) + kiln::sum(d * d));
  };
  auto r = kiln::gradcheck(views, {x, kiln::randn<double>({4, 5}, rng)});
  CHECK_MESSAGE(r.ok, r.message);
  // size-1 dims (the softmax of a single element is 1: zero gradient) and 0-d
  auto single = kiln::gradcheck([](const Inputs& in) { return kiln::softmax(in[0], 1); }, {kiln::randn<double>({3, 1}, rng)});
  CHECK_MESSAGE(single.ok, single.message);
  auto flat = kiln::gradcheck([](const Inputs& in) { return kiln::log_softmax(in[0], 0); }, {kiln::randn<double>({1, 6}, rng)});
  CHECK_MESSAGE(flat.ok, flat.message);
  Tensor<double> s(Shape{});
  s.fill_(0.7);
  auto zero_d = kiln::gradcheck([](const Inputs& in) { return kiln::softmax(in[0], 0); }, {s});
  CHECK_MESSAGE(zero_d.ok, zero_d.message);
}

TEST_CASE("second derivatives: gradgradcheck, and a Hessian by hand") {
  kiln::Rng rng(13);
  for (int axis : {1, 0})
    for (bool log : {false, true}) {
      CAPTURE(axis);
      CAPTURE(log);
      auto f = [axis, log](const Inputs& in) {
        return log ? kiln::log_softmax(in[0], axis) : kiln::softmax(in[0], axis);
      };
      auto r = kiln::gradgradcheck(f, {kiln::randn<double>({3, 4}, rng)});
      CHECK_MESSAGE(r.ok, r.message);
    }
  auto strided = kiln::gradgradcheck([](const Inputs& in) { return kiln::log_softmax(in[0].t(), 1); },
                                     {kiln::randn<double>({5, 2}, rng)});
  CHECK_MESSAGE(strided.ok, strided.message);
  // L = log_softmax(x)_0 for x = [a, b]: ∂L/∂x = e_0 − p, ∂²L/∂x² = −(diag p − p pᵀ).
  auto x = kiln::from_vector<double>({0.3, -0.4}).requires_grad();
  auto L = kiln::log_softmax(x, 0).select(0, 0);
  auto g = kiln::grad<double, kiln::cpu>({L}, {x}, {}, true, true)[0];
  const double p0 = 1 / (1 + std::exp(-0.7)), p1 = 1 - p0;
  CHECK(g.to_vector()[0] == doctest::Approx(1 - p0));
  CHECK(g.to_vector()[1] == doctest::Approx(-p1));
  auto h0 = kiln::grad<double, kiln::cpu>({g.select(0, 0)}, {x})[0].to_vector();
  CHECK(h0[0] == doctest::Approx(-(p0 - p0 * p0)));
  CHECK(h0[1] == doctest::Approx(p0 * p1));
}

TEST_CASE("errors name the op and the axis") {
  auto x = kiln::zeros<float>({2, 3});
  CHECK_THROWS_AS(kiln::softmax(x, 2), kiln::ValueError);
  CHECK_THROWS_AS(kiln::log_softmax(x, -3), kiln::ValueError);
  try {
    kiln::log_softmax(x, 5);
    FAIL("expected an error");
  } catch (const kiln::ValueError& e) {
    const std::string what = e.what();
    CHECK(what.find("log_softmax") != std::string::npos);
    CHECK(what.find("axis 5") != std::string::npos);
  }
  CHECK_THROWS_AS(kiln::softmax(Tensor<float>(), 0), kiln::ValueError);
  // empty tensors pass through
  CHECK(kiln::softmax(kiln::zeros<float>({0, 3}), 1).shape() == Shape{0, 3});
  CHECK(kiln::log_softmax(kiln::zeros<float>({2, 0}), 1).shape() == Shape{2, 0});
}

TEST_CASE("outputs and gradients agree with PyTorch") {
  kiln::Rng rng(17);
  std::ostringstream os;
  os << std::setprecision(9);
  int k = 0;
  for (Shape shape : {Shape{4, 10}, Shape{3, 5, 7}, Shape{2, 3, 4, 5}, Shape{6}})
    for (int axis = 0; axis < shape.ndim; ++axis)
      for (const char* op : {"softmax", "log_softmax"}) {
        const bool log = std::string(op) == "log_softmax";
        add_case(os, rng, std::string(op) + "_" + std::to_string(k++), op, {{"axis", std::to_string(axis)}},
                 {{"x", kiln::randn<float>(shape, rng, 0.0f, 2.0f), true}}, {},
                 [axis, log](const std::vector<Tensor<float>>& in) {
                   return std::vector<Tensor<float>>{log ? kiln::log_softmax(in[0], axis) : kiln::softmax(in[0], axis)};
                 });
      }
  // a GPT-sized row and large logits
  add_case(os, rng, "log_softmax_wide", "log_softmax", {{"axis", "1"}},
           {{"x", kiln::randn<float>({2, 50257}, rng, 0.0f, 5.0f), true}}, {},
           [](const std::vector<Tensor<float>>& in) { return std::vector<Tensor<float>>{kiln::log_softmax(in[0], 1)}; });
  add_case(os, rng, "softmax_large", "softmax", {{"axis", "1"}},
           {{"x", kiln::randn<float>({3, 9}, rng, 0.0f, 300.0f), true}}, {},
           [](const std::vector<Tensor<float>>& in) { return std::vector<Tensor<float>>{kiln::softmax(in[0], 1)}; });
  check_with_torch(os.str(), "softmax");
}
