// Tests of kiln/optim/rmsprop.hpp: parameter trajectories and final buffers against
// torch.optim.RMSprop for every option combination, and the first step by hand.
#include <kiln/optim/rmsprop.hpp>

#include "optim_reference.hpp"

#include <doctest/doctest.h>

#include <cmath>

using kiln::Tensor;
using kiln::optim::Parameters;
using kiln::optim::RMSprop;
using kiln::optim::RMSpropOptions;

namespace {

kiln::test::TrajectoryCase rmsprop_case(std::string name, std::string torch_kwargs, RMSpropOptions options) {
  kiln::test::TrajectoryCase c;
  c.name = std::move(name);
  c.torch_optimizer = "RMSprop";
  c.torch_groups = "[{\"params\": [0, 1, 2], " + torch_kwargs + "}]";
  c.make = [options](const Parameters& params) { return std::make_unique<RMSprop>(params, options); };
  return c;
}

}  // namespace

TEST_CASE("RMSprop follows torch.optim.RMSprop step for step") {
  std::vector<kiln::test::TrajectoryCase> cases;
  cases.push_back(rmsprop_case("defaults", "\"lr\": 0.01", {}));
  cases.push_back(rmsprop_case("alpha_eps", "\"lr\": 0.005, \"alpha\": 0.9, \"eps\": 1e-4",
                               {.lr = 0.005, .alpha = 0.9, .eps = 1e-4}));
  cases.push_back(rmsprop_case("weight_decay", "\"lr\": 0.01, \"weight_decay\": 0.2", {.lr = 0.01, .weight_decay = 0.2}));
  cases.push_back(rmsprop_case("momentum", "\"lr\": 0.01, \"momentum\": 0.9", {.lr = 0.01, .momentum = 0.9}));
  cases.push_back(rmsprop_case("centered", "\"lr\": 0.01, \"centered\": true", {.lr = 0.01, .centered = true}));
  cases.push_back(rmsprop_case("centered_momentum_decay_maximize",
                               "\"lr\": 0.003, \"centered\": true, \"momentum\": 0.5, \"weight_decay\": 0.1, "
                               "\"maximize\": true, \"alpha\": 0.95",
                               {.lr = 0.003, .alpha = 0.95, .weight_decay = 0.1, .momentum = 0.5, .centered = true,
                                .maximize = true}));
  {
    auto c = rmsprop_case("missing_grads", "\"lr\": 0.01, \"momentum\": 0.8, \"centered\": true",
                          {.lr = 0.01, .momentum = 0.8, .centered = true});
    c.missing = [](int step, std::size_t param) { return (param == 1 && step < 3) || (param == 0 && step == 5); };
    cases.push_back(c);
  }
  {
    auto c = rmsprop_case("large", "\"lr\": 0.01, \"momentum\": 0.9, \"centered\": true",
                          {.lr = 0.01, .momentum = 0.9, .centered = true});
    c.shapes = {{600, 500}, {40000}, {7}};
    c.steps = 5;
    cases.push_back(c);
  }
  {
    auto c = rmsprop_case("strided", "\"lr\": 0.01, \"momentum\": 0.3", {.lr = 0.01, .momentum = 0.3});
    c.shapes = {{200, 90}, {5}, {2, 3, 2}};
    c.transposed_param = true;
    c.transposed_grads = true;
    cases.push_back(c);
  }
  kiln::test::compare_with_torch("rmsprop", cases);
}

TEST_CASE("RMSprop's first step by hand") {
  // s = (1-α)·g², so p moves by lr·g / (sqrt(1-α)·|g| + eps).
  auto p = kiln::from_vector<float>({1.0f, -1.0f}).requires_grad();
  RMSprop opt({p}, {.lr = 0.01, .alpha = 0.75, .eps = 0.1});
  p.set_grad(kiln::from_vector<float>({2.0f, -0.5f}));
  opt.step();
  const auto v = p.to_vector();
  CHECK(v[0] == doctest::Approx(1.0 - 0.01 * 2.0 / (0.5 * 2.0 + 0.1)).epsilon(1e-6));
  CHECK(v[1] == doctest::Approx(-1.0 + 0.01 * 0.5 / (0.5 * 0.5 + 0.1)).epsilon(1e-6));
  CHECK(opt.state(0).tensors.size() == 1);

  // Centered: a = (1-α)·g and the denominator is sqrt(s - a²) + eps = sqrt(α(1-α))·|g| + eps.
  auto q = kiln::from_vector<float>({0.0f}).requires_grad();
  RMSprop centered({q}, {.lr = 0.1, .alpha = 0.75, .eps = 0.0, .centered = true});
  q.set_grad(kiln::from_vector<float>({4.0f}));
  centered.step();
  CHECK(q.item() == doctest::Approx(-0.1 * 4.0 / (std::sqrt(0.75 * 0.25) * 4.0)).epsilon(1e-6));
}

TEST_CASE("RMSprop rejects invalid hyper-parameters") {
  auto p = kiln::zeros<float>({2}).requires_grad();
  CHECK_THROWS_WITH_AS(RMSprop({p}, {.alpha = -0.1}), doctest::Contains("alpha"), kiln::ValueError);
  CHECK_THROWS_AS(RMSprop({p}, {.eps = -1.0}), kiln::ValueError);
  CHECK_THROWS_AS(RMSprop({p}, {.momentum = -1.0}), kiln::ValueError);
}
