// Tests of include/kiln/nn/module.hpp (with Linear, activations and Sequential): dotted names and
// their order in nested modules (the expected lists are what PyTorch 1.13 prints for the same
// structure), a 3-layer MLP's output and gradients against PyTorch, registration errors, state_dict round trips and every load_state_dict error,
// freezing, train/eval propagation, zero_grad, parameter counts, shared modules and tied weights.
#include <doctest/doctest.h>

#include <kiln/kiln.hpp>
#include <kiln/nn/nn.hpp>

#include "../support/torch_reference.hpp"

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <unistd.h>

using kiln::index_t;
using kiln::Shape;
using kiln::Tensor;
namespace nn = kiln::nn;

namespace {

// Registers a child, then a parameter, then a buffer, then another child.
struct Block : nn::Module {
  std::shared_ptr<nn::Linear> fc1;
  Tensor<float>& scale;
  Tensor<float>& mean;
  std::shared_ptr<nn::Linear> fc2;
  explicit Block(kiln::Rng& rng)
      : fc1(register_module("fc1", std::make_shared<nn::Linear>(4, 8, true, rng))),
        scale(register_parameter("scale", kiln::ones<float>({8}))),
        mean(register_buffer("mean", kiln::zeros<float>({8}))),
        fc2(register_module("fc2", std::make_shared<nn::Linear>(8, 8, false, rng))) {}
  Tensor<float> forward(const Tensor<float>& x) {
    Tensor<float> h = kiln::tanh(fc1->forward(x) * scale);
    return fc2->forward(h);
  }
};

struct Net : nn::Module {
  Tensor<float>& temperature;
  std::shared_ptr<Block> encoder;
  Tensor<float>& count;
  std::shared_ptr<nn::Linear> head;
  Tensor<float>& cache;
  explicit Net(kiln::Rng& rng)
      : temperature(register_parameter("temperature", kiln::ones<float>({1}))),
        encoder(register_module("encoder", std::make_shared<Block>(rng))),
        count(register_buffer("count", kiln::zeros<float>({1}))),
        head(register_module("head", std::make_shared<nn::Linear>(8, 3, true, rng))),
        cache(register_buffer("cache", kiln::zeros<float>({2}), false)) {}
  Tensor<float> forward(const Tensor<float>& x) { return Tensor<float>(head->forward(encoder->forward(x)) * temperature); }
};

template <class Pairs>
std::vector<std::string> names_of(const Pairs& pairs) {
  std::vector<std::string> out;
  for (const auto& p : pairs) out.push_back(p.first);
  return out;
}

std::string message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const kiln::Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("dotted names in PyTorch's order") {
  kiln::Rng rng(1);
  Net net(rng);
  // torch: [k for k, _ in net.named_parameters()]
  CHECK(names_of(net.named_parameters()) ==
        std::vector<std::string>{"temperature", "encoder.scale", "encoder.fc1.weight", "encoder.fc1.bias",
                                 "encoder.fc2.weight", "head.weight", "head.bias"});
  // torch: list(net.state_dict().keys())
  CHECK(net.state_dict().keys() == std::vector<std::string>{"temperature", "count", "encoder.scale", "encoder.mean",
                                                            "encoder.fc1.weight", "encoder.fc1.bias",
                                                            "encoder.fc2.weight", "head.weight", "head.bias"});
  // torch: named_buffers (non-persistent included), named_modules
  CHECK(names_of(net.named_buffers()) == std::vector<std::string>{"count", "cache", "encoder.mean"});
  CHECK(names_of(net.named_modules()) ==
        std::vector<std::string>{"", "encoder", "encoder.fc1", "encoder.fc2", "head"});
  CHECK(names_of(net.named_children()) == std::vector<std::string>{"encoder", "head"});
  CHECK(names_of(net.named_parameters(false)) == std::vector<std::string>{"temperature"});
  // the tensors are the module's own: same storage, same autograd state
  auto params = net.parameters();
  REQUIRE(params.size() == 7);
  CHECK(params[0].data() == net.temperature.data());
  CHECK(params[0].autograd_meta() == net.temperature.autograd_meta());
  CHECK(params[5].data() == net.head->weight().data());
  CHECK(params[1].tracks_grad());
  CHECK(params[1].is_leaf());
  CHECK_FALSE(net.buffers()[0].tracks_grad());
  CHECK(net.num_parameters() == 1 + 8 + 4 * 8 + 8 + 8 * 8 + 8 * 3 + 3);
  // dotted look-ups
  CHECK(net.parameter("encoder.fc1.bias").data() == net.encoder->fc1->bias().data());
  CHECK(net.buffer("encoder.mean").data() == net.encoder->mean.data());
  CHECK(net.module("encoder.fc2").get() == net.encoder->fc2.get());
  CHECK_THROWS_WITH(net.parameter("encoder.fc3.weight"), doctest::Contains("no child module 'encoder.fc3'"));
  CHECK_THROWS_AS(net.parameter("encoder.nothing"), kiln::ValueError);
}

TEST_CASE("Sequential names its modules 0, 1, 2, ...") {
  kiln::Rng rng(2);
  nn::Sequential mlp(std::make_shared<nn::Linear>(4, 8, true, rng), std::make_shared<nn::ReLU>(),
                     std::make_shared<nn::Linear>(8, 2, true, rng));
  CHECK(mlp.state_dict().keys() == std::vector<std::string>{"0.weight", "0.bias", "2.weight", "2.bias"});
  CHECK(mlp.size() == 3);
  auto fc = mlp.at<nn::Linear>(2);
  CHECK(fc->out_features() == 2);
  CHECK_THROWS_AS(mlp.at<nn::Linear>(1), kiln::ValueError);
  CHECK_THROWS_AS(mlp[3], kiln::ValueError);
  // forward chains the modules: compare with the layers applied by hand
  auto x = kiln::randn<float>({5, 4}, rng);
  auto by_hand = kiln::linear(Tensor<float>(kiln::relu(kiln::linear(x, mlp.at<nn::Linear>(0)->weight(),
                                                                   mlp.at<nn::Linear>(0)->bias()))),
                              fc->weight(), fc->bias());
  CHECK(mlp(x).to_vector() == by_hand.to_vector());
  // nested, with explicit names and a Flatten
  nn::Sequential outer;
  outer.push_back("flatten", std::make_shared<nn::Flatten>());
  auto inner = outer.push_back("body", std::make_shared<nn::Sequential>());
  inner->push_back(std::make_shared<nn::Linear>(6, 3, false, rng));
  inner->push_back(std::make_shared<nn::GELU>("tanh"));
  outer.push_back(std::make_shared<nn::Identity>());
  CHECK(names_of(outer.named_modules()) == std::vector<std::string>{"", "flatten", "body", "body.0", "body.1", "2"});
  CHECK(outer.state_dict().keys() == std::vector<std::string>{"body.0.weight"});
  CHECK(outer(kiln::randn<float>({2, 3, 2}, rng)).shape() == Shape{2, 3});
  CHECK_THROWS_AS(outer.push_back("body", std::make_shared<nn::ReLU>()), kiln::ValueError);
  nn::Sequential empty;
  auto same = kiln::randn<float>({2, 2}, rng);
  CHECK(empty(same).data() == same.data());
}

TEST_CASE("registration errors") {
  nn::Module m;
  m.register_parameter("w", kiln::zeros<float>({2}));
  CHECK_THROWS_WITH(m.register_parameter("w", kiln::zeros<float>({2})), doctest::Contains("'w' is already a parameter"));
  CHECK_THROWS_WITH(m.register_buffer("w", kiln::zeros<float>({2})), doctest::Contains("'w' is already a parameter"));
  CHECK_THROWS_WITH(m.register_module("w", std::make_shared<nn::ReLU>()), doctest::Contains("already a parameter"));
  CHECK_THROWS_WITH(m.register_parameter("a.b", kiln::zeros<float>({2})), doctest::Contains("contains '.'"));
  CHECK_THROWS_WITH(m.register_parameter("", kiln::zeros<float>({2})), doctest::Contains("empty"));
  CHECK_THROWS_WITH(m.register_parameter("u", Tensor<float>()), doctest::Contains("undefined"));
  CHECK_THROWS_WITH(m.register_module("c", std::shared_ptr<nn::ReLU>()), doctest::Contains("null"));
  m.register_buffer("b", kiln::zeros<float>({1}));
  CHECK_THROWS_WITH(m.register_module("b", std::make_shared<nn::ReLU>()), doctest::Contains("already a buffer"));
  m.register_module("c", std::make_shared<nn::ReLU>());
  CHECK_THROWS_WITH(m.register_parameter("c", kiln::zeros<float>({2})), doctest::Contains("already a child module"));
  CHECK_THROWS_AS(m.register_parameter("c", kiln::zeros<float>({2})), kiln::ValueError);
  // a computed tensor becomes a new leaf; requires_grad = false registers it untracked
  auto src = kiln::ones<float>({3}).requires_grad();
  auto& computed = m.register_parameter("computed", Tensor<float>(src * 2.0f));
  CHECK(computed.is_leaf());
  CHECK(computed.tracks_grad());
  auto& fixed = m.register_parameter("fixed", kiln::ones<float>({3}), false);
  CHECK_FALSE(fixed.tracks_grad());
  CHECK(m.num_parameters() == 2 + 3 + 3);
  CHECK(m.num_parameters(true) == 2 + 3);
}

TEST_CASE("state_dict round trip between two networks") {
  kiln::Rng rng_a(10), rng_b(20);
  Net a(rng_a), b(rng_b);
  {
    kiln::NoGrad guard;
    a.count.fill_(7.0f);
    a.encoder->mean.fill_(0.5f);
    a.cache.fill_(3.0f);
  }
  auto x = kiln::randn<float>({5, 4}, rng_a);
  CHECK(a.forward(x).to_vector() != b.forward(x).to_vector());
  auto held = b.parameters();  // as an optimizer would hold them
  auto sd = a.state_dict();
  for (const auto& [name, t] : sd) CHECK_FALSE(t.tracks_grad());
  auto result = b.load_state_dict(sd);
  CHECK(result.missing_keys.empty());
  CHECK(result.unexpected_keys.empty());
  CHECK(a.forward(x).to_vector() == b.forward(x).to_vector());
  CHECK(b.count.item() == 7.0f);
  CHECK(b.encoder->mean.to_vector() == std::vector<float>(8, 0.5f));
  CHECK(b.cache.to_vector() == std::vector<float>(2, 0.0f));  // not persistent: not loaded
  // copied in place: the tensors held before see the new values, and still require grad
  CHECK(held[0].data() == b.temperature.data());
  CHECK(held[5].to_vector() == a.head->weight().to_vector());
  CHECK(held[5].tracks_grad());
  // the state dict shares storage with its module
  CHECK(sd.at("head.bias").data() == a.head->bias().data());
  CHECK_THROWS_AS(sd.at("head.nothing"), kiln::ValueError);
  // loading a module's own state dict changes nothing
  b.load_state_dict(b.state_dict());
  CHECK(a.forward(x).to_vector() == b.forward(x).to_vector());
}

TEST_CASE("load_state_dict lists every missing, unexpected and mis-shaped entry") {
  kiln::Rng rng(4);
  Net net(rng);
  const auto before = net.state_dict().keys();
  const std::vector<float> head_before = net.head->weight().to_vector();

  auto sd = net.state_dict();
  nn::StateDict<float> broken;
  for (const auto& [name, t] : sd) {
    if (name == "encoder.scale" || name == "count") continue;  // missing
    if (name == "head.weight") {
      broken.insert(name, kiln::zeros<float>({3, 9}));  // mis-shaped
    } else if (name == "encoder.fc1.bias") {
      broken.insert(name, kiln::zeros<float>({4}));  // mis-shaped
    } else {
      broken.insert(name, kiln::zeros<float>(t.shape()));
    }
  }
  broken.insert("encoder.fc3.weight", kiln::zeros<float>({2, 2}));  // unexpected
  broken.insert("extra", kiln::zeros<float>({1}));                  // unexpected

  const std::string msg = message_of([&] { net.load_state_dict(broken); });
  CHECK_THROWS_AS(net.load_state_dict(broken), nn::StateDictError);
  CHECK(msg.find("missing (2): count, encoder.scale") != std::string::npos);
  CHECK(msg.find("unexpected (2): encoder.fc3.weight, extra") != std::string::npos);
  CHECK(msg.find("mis-shaped (2): encoder.fc1.bias (module [8], state dict [4]), head.weight (module [3, 8], "
                 "state dict [3, 9])") != std::string::npos);
  // nothing was copied
  CHECK(net.head->weight().to_vector() == head_before);
  CHECK(net.temperature.item() == 1.0f);

  // not strict: missing and unexpected names are returned, mis-shaped entries still fail
  CHECK_THROWS_AS(net.load_state_dict(broken, false), nn::StateDictError);
  const std::string loose = message_of([&] { net.load_state_dict(broken, false); });
  CHECK(loose.find("mis-shaped (2)") != std::string::npos);
  CHECK(loose.find("missing") == std::string::npos);
  broken.erase("head.weight");
  broken.erase("encoder.fc1.bias");
  auto result = net.load_state_dict(broken, false);
  CHECK(result.missing_keys == std::vector<std::string>{"count", "encoder.scale", "encoder.fc1.bias", "head.weight"});
  CHECK(result.unexpected_keys == std::vector<std::string>{"encoder.fc3.weight", "extra"});
  CHECK(net.temperature.item() == 0.0f);                                           // loaded
  CHECK(net.encoder->scale.to_vector() == std::vector<float>(8, 1.0f));            // missing: untouched
  CHECK(net.head->weight().to_vector() == head_before);                            // missing: untouched
  // strict with only missing entries
  nn::StateDict<float> partial;
  partial.insert("temperature", kiln::ones<float>({1}));
  const std::string only_missing = message_of([&] { net.load_state_dict(partial); });
  CHECK(only_missing.find("missing (8)") != std::string::npos);
  CHECK(only_missing.find("unexpected") == std::string::npos);
  CHECK(net.state_dict().keys() == before);
  CHECK_THROWS_AS(partial.insert("temperature", kiln::ones<float>({1})), kiln::ValueError);
}

TEST_CASE("frozen parameters get no gradient; unfreeze restores the same autograd state") {
  kiln::Rng rng(5);
  Net net(rng);
  auto x = kiln::randn<float>({3, 4}, rng);
  auto held = net.parameters();
  kiln::sum(net.forward(x)).backward();
  for (const auto& named : net.named_parameters()) {
    const std::string& name = named.first;
    const auto& p = named.second;
    CAPTURE(name);
    CHECK(p.grad().defined());
  }
  CHECK(net.freeze("encoder") == 4);
  for (const auto& named : net.named_parameters()) {
    const std::string& name = named.first;
    const auto& p = named.second;
    CAPTURE(name);
    const bool frozen = name.rfind("encoder.", 0) == 0;
    CHECK(p.tracks_grad() == !frozen);
    CHECK(p.grad().defined() == !frozen);  // freezing clears the gradient
  }
  CHECK_FALSE(held[1].grad().defined());  // an optimizer's copy sees no gradient either
  CHECK(net.num_parameters(true) == 1 + 8 * 3 + 3);
  net.zero_grad();
  kiln::sum(net.forward(x)).backward();
  for (const auto& named : net.named_parameters()) {
    const std::string& name = named.first;
    const auto& p = named.second;
    CAPTURE(name);
    CHECK(p.grad().defined() == (name.rfind("encoder.", 0) != 0));
  }
  // "head" matches head.weight and head.bias only, a full name matches itself
  CHECK(net.freeze("head") == 2);
  CHECK(net.freeze("temperature") == 1);
  CHECK(net.freeze() == 0);  // all frozen already
  CHECK_THROWS_WITH(net.freeze("enc"), doctest::Contains("no parameter is named 'enc'"));
  CHECK_THROWS_AS(net.unfreeze("encoder.fc9"), kiln::ValueError);
  CHECK(net.unfreeze("encoder.fc1") == 2);
  CHECK(net.unfreeze() == 5);
  net.zero_grad();
  for (const auto& p : net.parameters()) CHECK_FALSE(p.grad().defined());
  kiln::sum(net.forward(x)).backward();
  // the copies taken before freezing share the restored autograd state
  for (std::size_t i = 0; i < held.size(); ++i) {
    CAPTURE(i);
    CHECK(held[i].autograd_meta() == net.parameters()[i].autograd_meta());
    CHECK(held[i].grad().defined());
  }
  // a parameter registered untracked can be unfrozen
  nn::Module m;
  auto& w = m.register_parameter("w", kiln::ones<float>({2}), false);
  CHECK(m.unfreeze("w") == 1);
  CHECK(w.tracks_grad());
  nn::Module no_parameters;
  CHECK(no_parameters.freeze() == 0);
  CHECK_THROWS_WITH(no_parameters.freeze("x"), doctest::Contains("(parameters: none)"));
}

TEST_CASE("train and eval reach every descendant") {
  kiln::Rng rng(6);
  Net net(rng);
  for (const auto& [name, m] : net.named_modules()) CHECK(m->is_training());
  net.eval();
  for (const auto& named : net.named_modules()) {
    const std::string& name = named.first;
    const auto& m = named.second;
    CAPTURE(name);
    CHECK_FALSE(m->is_training());
  }
  net.encoder->train();
  CHECK_FALSE(net.is_training());
  CHECK(net.encoder->fc2->is_training());
  CHECK_FALSE(net.head->is_training());
  net.train(true);
  for (const auto& [name, m] : net.named_modules()) CHECK(m->is_training());
  // dropout inside a Sequential follows the mode
  nn::Sequential seq(std::make_shared<nn::Dropout>(0.5, rng));
  auto ones = kiln::ones<float>({1000});
  CHECK(seq(ones).to_vector() != ones.to_vector());
  seq.eval();
  CHECK(seq(ones).to_vector() == ones.to_vector());
}

TEST_CASE("zero_grad clears every gradient") {
  kiln::Rng rng(7);
  Net net(rng);
  kiln::sum(net.forward(kiln::randn<float>({2, 4}, rng))).backward();
  CHECK(net.head->weight().grad().defined());
  net.zero_grad();
  for (const auto& p : net.parameters()) CHECK_FALSE(p.grad().defined());
}

TEST_CASE("shared modules and tied weights are listed once, saved under every name") {
  kiln::Rng rng(8);
  auto shared = std::make_shared<nn::Linear>(3, 3, true, rng);
  nn::Module m;
  m.register_module("a", shared);
  m.register_module("b", shared);
  CHECK(names_of(m.named_parameters()) == std::vector<std::string>{"a.weight", "a.bias"});
  CHECK(names_of(m.named_modules()) == std::vector<std::string>{"", "a"});
  CHECK(m.state_dict().keys() == std::vector<std::string>{"a.weight", "a.bias", "b.weight", "b.bias"});
  CHECK(m.num_parameters() == 12);
  // tying: registering another module's parameter shares its gradient
  nn::Module tied;
  auto enc = tied.register_module("enc", std::make_shared<nn::Linear>(4, 2, false, rng));
  auto& dec_w = tied.register_parameter("dec_weight", enc->weight());
  CHECK(dec_w.autograd_meta() == enc->weight().autograd_meta());
  // listed once, under the first name met (own parameters come before the children's, as PyTorch)
  CHECK(names_of(tied.named_parameters()) == std::vector<std::string>{"dec_weight"});
  CHECK(tied.state_dict().keys() == std::vector<std::string>{"dec_weight", "enc.weight"});
  auto x = kiln::ones<float>({1, 4});
  // y = (x Wᵀ) W, d sum(y) / dW collects both uses
  Tensor<float> y = kiln::matmul(kiln::linear(x, enc->weight()), dec_w);
  kiln::sum(y).backward();
  const auto w = enc->weight().detach();
  // d/dW_oi Σ_j Σ_o' (x·W_o'ᵀ) W_o'j = Σ_j W_oj · x_i + (x·W_oᵀ) (x has ones)
  for (index_t o = 0; o < 2; ++o)
    for (index_t i = 0; i < 4; ++i) {
      double row_sum = 0, dot = 0;
      for (index_t j = 0; j < 4; ++j) row_sum += w.at({o, j});
      for (index_t j = 0; j < 4; ++j) dot += w.at({o, j});
      CHECK(enc->weight().grad().at({o, i}) == doctest::Approx(row_sum + dot).epsilon(1e-5));
    }
}

TEST_CASE("double-precision modules") {
  kiln::Rng rng(9);
  nn::BasicSequential<double> mlp(std::make_shared<nn::BasicLinear<double>>(3, 4, true, rng),
                                  std::make_shared<nn::BasicTanh<double>>(),
                                  std::make_shared<nn::BasicLinear<double>>(4, 1, true, rng));
  auto x = kiln::randn<double>({2, 3}, rng);
  Tensor<double> y = mlp(x);
  CHECK(y.shape() == Shape{2, 1});
  kiln::sum(y).backward();
  CHECK(mlp.parameters().size() == 4);
  for (const auto& p : mlp.parameters()) CHECK(p.grad().defined());
}

namespace {

// One tensor per line: <name> <ndim> <dims...> <values...> (tests/torch/nn_linear.py).
template <class T>
void write_tensor(std::ofstream& f, const std::string& name, const Tensor<T>& t) {
  f << name << ' ' << t.dim();
  for (int d = 0; d < t.dim(); ++d) f << ' ' << t.size(d);
  char buf[40];
  for (T v : t.to_vector()) {
    std::snprintf(buf, sizeof buf, " %.17g", static_cast<double>(v));
    f << buf;
  }
  f << '\n';
}

struct Reference {
  std::vector<std::string> keys;
  std::map<std::string, Tensor<double>> tensors;
};

Reference read_reference(const std::string& path) {
  Reference ref;
  std::ifstream f(path);
  std::string line;
  while (std::getline(f, line)) {
    std::istringstream in(line);
    std::string name;
    in >> name;
    if (name == "keys") {
      for (std::string k; in >> k;) ref.keys.push_back(k);
      continue;
    }
    int ndim = 0;
    in >> ndim;
    Shape shape;
    for (int d = 0; d < ndim; ++d) {
      index_t n = 0;
      in >> n;
      shape.push_back(n);
    }
    std::vector<double> values;
    for (double v; in >> v;) values.push_back(v);
    ref.tensors[name] = kiln::from_vector<double>(values, shape);
  }
  return ref;
}

template <class T>
void compare(const Tensor<T>& got, const Reference& ref, const std::string& name, double tol) {
  CAPTURE(name);
  auto it = ref.tensors.find(name);
  REQUIRE(it != ref.tensors.end());
  REQUIRE(got.defined());
  REQUIRE(got.shape() == it->second.shape());
  const auto a = got.to_vector();
  const auto b = it->second.to_vector();
  double worst = 0;
  for (std::size_t i = 0; i < a.size(); ++i)
    worst = std::max(worst, std::abs(static_cast<double>(a[i]) - b[i]) / (1.0 + std::abs(b[i])));
  CAPTURE(worst);
  CHECK(worst <= tol);
}

template <class T>
std::shared_ptr<nn::BasicSequential<T>> make_mlp(kiln::Rng& rng) {
  return std::make_shared<nn::BasicSequential<T>>(
      std::make_shared<nn::BasicLinear<T>>(6, 16, true, rng), std::make_shared<nn::BasicGELU<T>>(),
      std::make_shared<nn::BasicLinear<T>>(16, 12, true, rng), std::make_shared<nn::BasicTanh<T>>(),
      std::make_shared<nn::BasicLinear<T>>(12, 3, true, rng));
}

// y = mlp(x), L = Σ y ⊙ r; returns y and leaves the gradients in x and the parameters.
template <class T>
Tensor<T> run_mlp(nn::BasicSequential<T>& mlp, Tensor<T>& x, const Tensor<T>& r) {
  Tensor<T> y = mlp(x);
  kiln::sum(Tensor<T>(y * r)).backward();
  return y;
}

}  // namespace

TEST_CASE("a 3-layer MLP's output and gradients match PyTorch") {
  kiln::Rng rng(2024);
  auto mlp = make_mlp<float>(rng);
  auto x = kiln::randn<float>({7, 6}, rng).requires_grad();
  auto r = kiln::randn<float>({7, 3}, rng);

  const auto dir = std::filesystem::temp_directory_path();
  const std::string stem = "kiln_nn_linear_" + std::to_string(::getpid());
  const std::string in_path = (dir / (stem + "_in.txt")).string();
  const std::string out_path = (dir / (stem + "_out.txt")).string();
  {
    std::ofstream f(in_path);
    write_tensor(f, "x", x.detach());
    write_tensor(f, "r", r);
    for (const auto& [name, t] : mlp->state_dict()) write_tensor(f, name, t);
  }
  const int status =
      kiln::test::run_torch_script("nn_linear.py", kiln::test::shell_quote(in_path) + " " + kiln::test::shell_quote(out_path));
  REQUIRE(status == 0);
  const Reference ref = read_reference(out_path);
  std::filesystem::remove(in_path);
  std::filesystem::remove(out_path);

  CHECK(mlp->state_dict().keys() == ref.keys);
  // float: kiln's rounding against PyTorch in float64
  Tensor<float> y = run_mlp(*mlp, x, r);
  compare(y, ref, "y", 1e-5);
  compare(x.grad(), ref, "x.grad", 1e-5);
  for (const auto& [name, p] : mlp->named_parameters()) compare(p.grad(), ref, name + ".grad", 1e-5);

  // double: the same weights loaded through a state dict, agreement to rounding
  kiln::Rng other(1);
  auto mlp64 = make_mlp<double>(other);
  nn::StateDict<double> sd64;
  for (const auto& [name, t] : mlp->state_dict()) sd64.insert(name, t.to<double>());
  mlp64->load_state_dict(sd64);
  auto x64 = x.detach().to<double>().requires_grad();
  Tensor<double> y64 = run_mlp(*mlp64, x64, r.to<double>());
  compare(y64, ref, "y", 1e-12);
  compare(x64.grad(), ref, "x.grad", 1e-12);
  for (const auto& [name, p] : mlp64->named_parameters()) compare(p.grad(), ref, name + ".grad", 1e-12);
}

TEST_CASE("activation modules compute their formulas") {
  auto x = kiln::from_vector<double>({-3.0, -1.0, -0.25, 0.0, 0.5, 2.0, 4.0}, {7});
  const auto xv = x.to_vector();
  auto check_each = [&](const Tensor<double>& y, auto formula) {
    REQUIRE(y.shape() == x.shape());
    const auto yv = y.to_vector();
    for (std::size_t i = 0; i < xv.size(); ++i) {
      CAPTURE(xv[i]);
      CHECK(yv[i] == doctest::Approx(formula(xv[i])).epsilon(1e-12));
    }
  };
  check_each(nn::BasicReLU<double>()(x), [](double v) { return v > 0 ? v : 0.0; });
  check_each(nn::BasicLeakyReLU<double>(0.2)(x), [](double v) { return v > 0 ? v : 0.2 * v; });
  check_each(nn::BasicLeakyReLU<double>()(x), [](double v) { return v > 0 ? v : 0.01 * v; });
  check_each(nn::BasicGELU<double>()(x), [](double v) { return 0.5 * v * (1 + std::erf(v / std::sqrt(2.0))); });
  check_each(nn::BasicGELU<double>("tanh")(x), [](double v) {
    return 0.5 * v * (1 + std::tanh(std::sqrt(2.0 / 3.14159265358979323846) * (v + 0.044715 * v * v * v)));
  });
  check_each(nn::BasicSiLU<double>()(x), [](double v) { return v / (1 + std::exp(-v)); });
  check_each(nn::BasicTanh<double>()(x), [](double v) { return std::tanh(v); });
  check_each(nn::BasicSigmoid<double>()(x), [](double v) { return 1 / (1 + std::exp(-v)); });
  check_each(nn::BasicSoftplus<double>()(x), [](double v) { return std::log1p(std::exp(v)); });
  // beta = 2, threshold = 3: linear where 2x > 3
  check_each(nn::BasicSoftplus<double>(2.0, 3.0)(x),
             [](double v) { return 2 * v > 3 ? v : std::log1p(std::exp(2 * v)) / 2; });
  check_each(nn::BasicIdentity<double>()(x), [](double v) { return v; });
  CHECK(nn::GELU("tanh").approximate() == "tanh");
  CHECK_THROWS_WITH(nn::GELU("erf"), doctest::Contains("\"none\" or \"tanh\""));
  CHECK_THROWS_AS(nn::Softplus(0.0), kiln::ValueError);
  // Flatten: all but the batch dim by default, a view of contiguous input
  auto t = kiln::zeros<float>({2, 3, 4, 5});
  auto f = nn::Flatten()(t);
  CHECK(f.shape() == Shape{2, 60});
  CHECK(f.data() == t.data());
  CHECK(nn::Flatten(0, 1)(t).shape() == Shape{6, 4, 5});
  CHECK(nn::Flatten(2)(t).shape() == Shape{2, 3, 20});
  // gradients flow through a module (fused elementwise node)
  auto xr = x.clone().requires_grad();
  kiln::sum(nn::BasicSiLU<double>()(xr)).backward();
  const auto gv = xr.grad().to_vector();
  for (std::size_t i = 0; i < xv.size(); ++i) {
    const double s = 1 / (1 + std::exp(-xv[i]));
    CHECK(gv[i] == doctest::Approx(s * (1 + xv[i] * (1 - s))).epsilon(1e-12));
  }
}
