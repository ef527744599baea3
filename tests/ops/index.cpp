// Tests of include/kiln/ops/index.hpp: index_select, gather, embedding, concat, stack, split and
// chunk by hand (values, shapes, views), gradients by hand and by gradcheck/gradgradcheck in
// float64, errors naming the bad index, and a comparison with PyTorch (tests/torch/ops_reference.py).
#include <doctest/doctest.h>
#include <kiln/kiln.hpp>
// After kiln.hpp: gradcheck.hpp's inline functions need the CPU backend defined.
#include <kiln/autograd/gradcheck.hpp>
#include <kiln/ops/index.hpp>

#include "../support/torch_reference.hpp"

#include <filesystem>
#include <fstream>
#include <functional>
#include <iomanip>
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

Tensor<float> iota(Shape s) {
  auto t = Tensor<float>::uninitialized(s);
  for (index_t i = 0; i < t.numel(); ++i) t.data()[i] = static_cast<float>(i);
  return t;
}
Tensor<index_t> indices(std::vector<index_t> v, Shape s) { return kiln::from_vector<index_t>(v, s); }
Tensor<index_t> indices(std::vector<index_t> v) {
  const auto n = static_cast<index_t>(v.size());
  return kiln::from_vector<index_t>(std::move(v), Shape{n});
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

TEST_CASE("index_select by hand, with repeated indices and their summed gradient") {
  auto x = iota({3, 4});
  auto rows = kiln::index_select(x, 0, indices({2, 0, 2}));
  CHECK(rows.shape() == Shape{3, 4});
  CHECK(rows.to_vector() == std::vector<float>{8, 9, 10, 11, 0, 1, 2, 3, 8, 9, 10, 11});
  auto cols = kiln::index_select(x, -1, indices({3, 1}));
  CHECK(cols.shape() == Shape{3, 2});
  CHECK(cols.to_vector() == std::vector<float>{3, 1, 7, 5, 11, 9});
  // a 0-d index keeps the dimension (extent 1); an empty index gives extent 0
  CHECK(kiln::index_select(x, 1, indices({2}, Shape{})).to_vector() == std::vector<float>{2, 6, 10});
  CHECK(kiln::index_select(x, 0, indices({})).shape() == Shape{0, 4});
  // strided input
  CHECK(kiln::index_select(x.t(), 0, indices({1})).to_vector() == std::vector<float>{1, 5, 9});
  // the gradient of Σ rows: row 2 was picked twice, row 1 never
  auto w = iota({3, 4}).requires_grad();
  kiln::sum(kiln::index_select(w, 0, indices({2, 0, 2}))).backward();
  CHECK(w.grad().to_vector() == std::vector<float>{1, 1, 1, 1, 0, 0, 0, 0, 2, 2, 2, 2});
  // the indices are copied: changing them after the forward does not change the backward
  auto idx = indices({1});
  auto v = iota({3, 2}).requires_grad();
  auto y = kiln::index_select(v, 0, idx);
  idx.data()[0] = 0;
  kiln::sum(y).backward();
  CHECK(v.grad().to_vector() == std::vector<float>{0, 0, 1, 1, 0, 0});
  // integer tensors too (no gradient)
  auto ints = indices({10, 11, 12, 13}, Shape{2, 2});
  CHECK(kiln::index_select(ints, 1, indices({1, 1, 0})).to_vector() == std::vector<index_t>{11, 11, 10, 13, 13, 12});
}

TEST_CASE("gather by hand (PyTorch's semantics), scatter-add gradient") {
  // torch.gather(torch.tensor([[1, 2], [3, 4]]), 1, torch.tensor([[0, 0], [1, 0]])) = [[1, 1], [4, 3]]
  auto t = kiln::from_vector<float>({1, 2, 3, 4}, Shape{2, 2});
  CHECK(kiln::gather(t, 1, indices({0, 0, 1, 0}, Shape{2, 2})).to_vector() == std::vector<float>{1, 1, 4, 3});
  CHECK(kiln::gather(t, 0, indices({1, 0, 0, 0}, Shape{2, 2})).to_vector() == std::vector<float>{3, 2, 1, 2});
  // the index may be smaller than the input outside the gathered axis, and longer along it
  auto x = iota({3, 4});
  auto g = kiln::gather(x, 1, indices({3, 3, 0, 1, 2, 2}, Shape{2, 3}));
  CHECK(g.shape() == Shape{2, 3});
  CHECK(g.to_vector() == std::vector<float>{3, 3, 0, 5, 6, 6});
  CHECK(kiln::gather(x.t(), 0, indices({2, 0}, Shape{1, 2})).to_vector() == std::vector<float>{2, 4});
  // gradient: each picked element gets the sum of the gradients of its copies
  auto w = iota({3, 4}).requires_grad();
  kiln::sum(kiln::gather(w, 1, indices({3, 3, 0, 1, 2, 2}, Shape{2, 3}))).backward();
  CHECK(w.grad().to_vector() == std::vector<float>{1, 0, 0, 2, 0, 1, 2, 0, 0, 0, 0, 0});
  // 0-d
  Tensor<float> s(Shape{});
  s.fill_(5.0f);
  CHECK(kiln::gather(s, 0, indices({0}, Shape{})).item() == 5.0f);
}

TEST_CASE("embedding: lookups of any id shape, gradient added into the weight rows") {
  auto weight = iota({5, 3});
  auto ids = indices({0, 4, 4, 1}, Shape{2, 2});
  auto y = kiln::embedding(weight, ids);
  CHECK(y.shape() == Shape{2, 2, 3});
  CHECK(y.to_vector() == std::vector<float>{0, 1, 2, 12, 13, 14, 12, 13, 14, 3, 4, 5});
  CHECK(kiln::embedding(weight, indices({3}, Shape{})).shape() == Shape{3});
  CHECK(kiln::embedding(weight, indices({2, 1, 0}, Shape{3, 1, 1})).shape() == Shape{3, 1, 1, 3});
  // backward: row 4 used twice, rows 2 and 3 unused
  auto w = iota({5, 3}).requires_grad();
  auto seed = kiln::from_vector<float>({1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, Shape{2, 2, 3});
  kiln::embedding(w, ids).backward(seed);
  CHECK(w.grad().to_vector() == std::vector<float>{1, 2, 3, 10, 11, 12, 0, 0, 0, 0, 0, 0, 11, 13, 15});
  // errors name the id, where it is, and the vocabulary size
  const std::string bad = error_of([&] { kiln::embedding(weight, indices({1, 7, 2})); });
  CHECK(bad.find("id 7") != std::string::npos);
  CHECK(bad.find("position 1") != std::string::npos);
  CHECK(bad.find("vocabulary of size 5") != std::string::npos);
  CHECK_THROWS_AS(kiln::embedding(weight, indices({-1})), kiln::IndexError);
  CHECK_THROWS_AS(kiln::embedding(weight, indices({5})), kiln::ValueError);
  CHECK_THROWS_AS(kiln::embedding(iota({5}), indices({1})), kiln::ShapeError);
}

TEST_CASE("index and gather errors name the index, its position and the valid range") {
  auto x = iota({3, 4});
  const std::string e1 = error_of([&] { kiln::index_select(x, 1, indices({0, 4})); });
  CHECK(e1.find("index_select") != std::string::npos);
  CHECK(e1.find("index 4 at position 1") != std::string::npos);
  CHECK(e1.find("size 4") != std::string::npos);
  CHECK_THROWS_AS(kiln::index_select(x, 0, indices({-1})), kiln::IndexError);
  CHECK_THROWS_AS(kiln::index_select(x, 2, indices({0})), kiln::ValueError);
  CHECK_THROWS_AS(kiln::index_select(x, 0, indices({0, 1}, Shape{1, 2})), kiln::ShapeError);
  const std::string e2 = error_of([&] { kiln::gather(x, 0, indices({0, 1, 3, 2}, Shape{2, 2})); });
  CHECK(e2.find("index 3 at position [1, 0]") != std::string::npos);
  CHECK(e2.find("size 3") != std::string::npos);
  CHECK_THROWS_AS(kiln::gather(x, 1, indices({0, 0}, Shape{2})), kiln::ShapeError);        // rank differs
  CHECK_THROWS_AS(kiln::gather(x, 1, indices({0, 0, 0, 0, 0}, Shape{5, 1})), kiln::ShapeError);  // too large
}

TEST_CASE("concat and stack by hand, their gradients, errors") {
  auto a = iota({2, 2});
  auto b = iota({2, 3});
  auto c = kiln::concat(std::vector<Tensor<float>>{a, b}, 1);
  CHECK(c.shape() == Shape{2, 5});
  CHECK(c.to_vector() == std::vector<float>{0, 1, 0, 1, 2, 2, 3, 3, 4, 5});
  CHECK(kiln::concat(std::vector<Tensor<float>>{a, a.t()}, 0).to_vector() ==
        std::vector<float>{0, 1, 2, 3, 0, 2, 1, 3});
  // a zero-sized piece contributes nothing
  CHECK(kiln::concat(std::vector<Tensor<float>>{a, kiln::zeros<float>({2, 0})}, -1).to_vector() ==
        a.to_vector());
  auto s = kiln::stack(std::vector<Tensor<float>>{a, a * 10.0f}, 2);
  CHECK(s.shape() == Shape{2, 2, 2});
  CHECK(s.to_vector() == std::vector<float>{0, 0, 1, 10, 2, 20, 3, 30});
  CHECK(kiln::stack(std::vector<Tensor<float>>{a, a}, 0).shape() == Shape{2, 2, 2});
  Tensor<float> zero_d(Shape{});
  CHECK(kiln::stack(std::vector<Tensor<float>>{zero_d, zero_d, zero_d}).shape() == Shape{3});
  // integer tensors
  CHECK(kiln::concat(std::vector<Tensor<index_t>>{indices({1}), indices({2, 3})}).to_vector() ==
        std::vector<index_t>{1, 2, 3});
  // gradients are the slices of the output's gradient
  auto wa = iota({2, 2}).requires_grad();
  auto wb = iota({2, 3}).requires_grad();
  auto seed = iota({2, 5});
  kiln::concat(std::vector<Tensor<float>>{wa, wb}, 1).backward(seed);
  CHECK(wa.grad().to_vector() == std::vector<float>{0, 1, 5, 6});
  CHECK(wb.grad().to_vector() == std::vector<float>{2, 3, 4, 7, 8, 9});
  // errors
  CHECK_THROWS_AS(kiln::concat(std::vector<Tensor<float>>{}), kiln::ValueError);
  CHECK_THROWS_AS(kiln::concat(std::vector<Tensor<float>>{a, b}, 0), kiln::ShapeError);
  CHECK_THROWS_AS(kiln::concat(std::vector<Tensor<float>>{a, iota({4})}, 0), kiln::ShapeError);
  CHECK_THROWS_AS(kiln::concat(std::vector<Tensor<float>>{zero_d}), kiln::ShapeError);
  CHECK_THROWS_AS(kiln::concat(std::vector<Tensor<float>>{a}, 2), kiln::ValueError);
  const std::string e = error_of([&] { kiln::stack(std::vector<Tensor<float>>{a, a, b}); });
  CHECK(e.find("tensor 2") != std::string::npos);
  CHECK(e.find("[2, 3]") != std::string::npos);
  CHECK_THROWS_AS(kiln::stack(std::vector<Tensor<float>>{a}, 3), kiln::ValueError);
}

TEST_CASE("split and chunk: views with PyTorch's piece sizes") {
  auto x = iota({5, 2});
  auto pieces = kiln::split(x, 2);
  REQUIRE(pieces.size() == 3);
  CHECK(pieces[0].shape() == Shape{2, 2});
  CHECK(pieces[2].shape() == Shape{1, 2});
  CHECK(pieces[2].to_vector() == std::vector<float>{8, 9});
  CHECK(pieces[1].data() == x.data() + 4);  // a view, not a copy
  auto by_sizes = kiln::split(x, std::vector<index_t>{1, 0, 4}, 0);
  REQUIRE(by_sizes.size() == 3);
  CHECK(by_sizes[1].shape() == Shape{0, 2});
  CHECK(by_sizes[2].to_vector() == std::vector<float>{2, 3, 4, 5, 6, 7, 8, 9});
  CHECK(kiln::split(x, 1, 1)[1].to_vector() == std::vector<float>{1, 3, 5, 7, 9});
  // torch.chunk: 5 rows in 4 chunks → 2, 2, 1; 6 in 4 → 2, 2, 2; 5 in 1 → 5
  auto c4 = kiln::chunk(x, 4);
  REQUIRE(c4.size() == 3);
  CHECK(c4[2].shape() == Shape{1, 2});
  CHECK(kiln::chunk(iota({6}), 4).size() == 3);
  CHECK(kiln::chunk(x, 1).size() == 1);
  CHECK(kiln::chunk(x, 9).size() == 5);
  CHECK(kiln::chunk(iota({0, 2}), 3).size() == 3);
  // gradients of the pieces land in their rows
  auto w = iota({5, 2}).requires_grad();
  auto parts = kiln::chunk(w, 3);
  Tensor<float> loss = kiln::sum(parts[0]) + kiln::sum(parts[2]) * 3.0f;
  loss.backward();
  CHECK(w.grad().to_vector() == std::vector<float>{1, 1, 1, 1, 0, 0, 0, 0, 3, 3});
  // errors
  CHECK_THROWS_AS(kiln::split(x, 0), kiln::ValueError);
  CHECK_THROWS_AS(kiln::split(x, std::vector<index_t>{2, 2}, 0), kiln::ShapeError);
  CHECK_THROWS_AS(kiln::split(x, std::vector<index_t>{6, -1}, 0), kiln::ValueError);
  CHECK_THROWS_AS(kiln::chunk(x, 0), kiln::ValueError);
  CHECK_THROWS_AS(kiln::split(x, 1, 2), kiln::ValueError);
}

TEST_CASE("gradcheck: strided and broadcast inputs, repeated indices, size-1 dims") {
  kiln::Rng rng(5);
  auto x = kiln::randn<double>({3, 4, 2}, rng);
  auto rep = indices({1, 1, 0, 3});
  for (int axis : {0, 1, 2}) {
    CAPTURE(axis);
    auto idx = indices({0, static_cast<index_t>(axis == 2 ? 1 : 2), 0});
    check_gradcheck([axis, idx](const Inputs& in) { return kiln::index_select(in[0], axis, idx); }, {x});
  }
  check_gradcheck([rep](const Inputs& in) { return kiln::index_select(in[0].transpose(0, 1), 0, rep); }, {x});
  check_gradcheck([rep](const Inputs& in) { return kiln::index_select(in[0].expand({2, 4, 5}), 1, rep); },
                  {kiln::randn<double>({1, 4, 1}, rng)});
  auto gidx = indices({2, 0, 2, 1, 1, 1, 0, 0}, Shape{2, 2, 2});
  check_gradcheck([gidx](const Inputs& in) { return kiln::gather(in[0], 0, gidx); }, {x});
  check_gradcheck([gidx](const Inputs& in) { return kiln::gather(in[0].permute({1, 0, 2}), 1, gidx); }, {x});
  check_gradcheck([](const Inputs& in) { return kiln::gather(in[0], 1, indices({0, 0, 0}, Shape{3, 1})); },
                  {kiln::randn<double>({3, 1}, rng)});
  auto ids = indices({4, 0, 4, 2, 2, 2}, Shape{3, 2});
  check_gradcheck([ids](const Inputs& in) { return kiln::embedding(in[0], ids); }, {kiln::randn<double>({5, 3}, rng)});
  check_gradcheck([ids](const Inputs& in) { return kiln::embedding(in[0].t(), ids); }, {kiln::randn<double>({3, 5}, rng)});
  check_gradcheck(
      [](const Inputs& in) {
        return kiln::concat(std::vector<Tensor<double>>{in[0], in[1].t(), in[2].expand({4, 3}), in[0] * in[1].t()}, 0);
      },
      {kiln::randn<double>({2, 3}, rng), kiln::randn<double>({3, 2}, rng), kiln::randn<double>({1, 3}, rng)});
  check_gradcheck([](const Inputs& in) { return kiln::stack(std::vector<Tensor<double>>{in[0], in[1], in[0]}, 1); },
                  {kiln::randn<double>({2, 1, 3}, rng), kiln::randn<double>({2, 1, 3}, rng)});
  check_gradcheck(
      [](const Inputs& in) {
        auto p = kiln::split(in[0].t(), 2, 0);
        auto q = kiln::chunk(in[0], 3, 1);
        return Tensor<double>(kiln::sum(p[0] * p[0]) + kiln::sum(p[1]) * 2.0 + kiln::sum(q[2] * q[0]));
      },
      {kiln::randn<double>({4, 3}, rng)});
}

TEST_CASE("second derivatives through the scatter-add backwards") {
  kiln::Rng rng(9);
  auto x = kiln::randn<double>({4, 3}, rng);
  auto rep = indices({1, 1, 3});
  check_gradgradcheck([rep](const Inputs& in) { return Tensor<double>(kiln::square(kiln::index_select(in[0], 0, rep))); }, {x});
  auto gidx = indices({2, 2, 0, 1}, Shape{2, 2});
  check_gradgradcheck([gidx](const Inputs& in) { return Tensor<double>(kiln::exp(kiln::gather(in[0], 1, gidx))); }, {x});
  auto ids = indices({0, 3, 3});
  check_gradgradcheck(
      [ids](const Inputs& in) {
        auto e = kiln::embedding(in[0], ids);
        return Tensor<double>(e * e * e);
      },
      {x});
  check_gradgradcheck(
      [](const Inputs& in) {
        auto c = kiln::concat(std::vector<Tensor<double>>{in[0], in[1]}, 1);
        return Tensor<double>(kiln::tanh(c) * c);
      },
      {x, kiln::randn<double>({4, 2}, rng)});
}

TEST_CASE("outputs and gradients agree with PyTorch") {
  kiln::Rng rng(23);
  std::ostringstream os;
  os << std::setprecision(9);
  using Outs = std::vector<Tensor<float>>;
  using In = const std::vector<Tensor<float>>&;
  auto idx = indices({2, 0, 2, 3});
  for (int axis : {0, 1, 2})
    add_case(os, rng, "index_select_" + std::to_string(axis), "index_select", {{"axis", std::to_string(axis)}},
             {{"x", kiln::randn<float>({4, 5, 6}, rng), true}}, {{"index", idx}},
             [axis, idx](In in) { return Outs{kiln::index_select(in[0], axis, idx)}; });
  auto gidx = indices({0, 3, 1, 1, 2, 0, 3, 3, 0, 2, 1, 0}, Shape{2, 3, 2});
  for (int axis : {0, 1, 2}) {
    Tensor<index_t> gi = axis == 2 ? indices({0, 1, 1, 1, 0, 0, 1, 0, 0, 1, 1, 1}, Shape{2, 3, 2}) : gidx;
    add_case(os, rng, "gather_" + std::to_string(axis), "gather", {{"axis", std::to_string(axis)}},
             {{"x", kiln::randn<float>({4, 4, 2}, rng), true}}, {{"index", gi}},
             [axis, gi](In in) { return Outs{kiln::gather(in[0], axis, gi)}; });
  }
  auto ids = indices({7, 0, 7, 3, 9, 9}, Shape{2, 3});
  add_case(os, rng, "embedding", "embedding", {}, {{"weight", kiln::randn<float>({10, 4}, rng), true}},
           {{"ids", ids}}, [ids](In in) { return Outs{kiln::embedding(in[0], ids)}; });
  add_case(os, rng, "concat", "concat", {{"axis", "1"}, {"count", "3"}},
           {{"x0", kiln::randn<float>({2, 3, 2}, rng), true},
            {"x1", kiln::randn<float>({2, 1, 2}, rng), false},
            {"x2", kiln::randn<float>({2, 4, 2}, rng), true}},
           {}, [](In in) { return Outs{kiln::concat(std::vector<Tensor<float>>{in[0], in[1], in[2]}, 1)}; });
  add_case(os, rng, "stack", "stack", {{"axis", "2"}, {"count", "2"}},
           {{"x0", kiln::randn<float>({3, 2}, rng), true}, {"x1", kiln::randn<float>({3, 2}, rng), true}}, {},
           [](In in) { return Outs{kiln::stack(std::vector<Tensor<float>>{in[0], in[1]}, 2)}; });
  add_case(os, rng, "split", "split", {{"size", "3"}, {"axis", "1"}}, {{"x", kiln::randn<float>({2, 7}, rng), true}},
           {}, [](In in) { return kiln::split(in[0], 3, 1); });
  add_case(os, rng, "chunk", "chunk", {{"chunks", "4"}, {"axis", "0"}}, {{"x", kiln::randn<float>({6, 2}, rng), true}},
           {}, [](In in) { return kiln::chunk(in[0], 4, 0); });
  check_with_torch(os.str(), "index");
}
