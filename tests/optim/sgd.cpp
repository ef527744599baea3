// Tests of kiln/optim/sgd.hpp: parameter trajectories against torch.optim.SGD for every option
// combination, and the update rule against hand-computed values.
#include <kiln/optim/sgd.hpp>

#include "optim_reference.hpp"

#include <doctest/doctest.h>

using kiln::Tensor;
using kiln::optim::Parameters;
using kiln::optim::SGD;
using kiln::optim::SGDOptions;

namespace {

kiln::test::TrajectoryCase sgd_case(std::string name, std::string torch_kwargs, SGDOptions options) {
  kiln::test::TrajectoryCase c;
  c.name = std::move(name);
  c.torch_optimizer = "SGD";
  c.torch_groups = "[{\"params\": [0, 1, 2], " + torch_kwargs + "}]";
  c.make = [options](const Parameters& params) { return std::make_unique<SGD>(params, options); };
  return c;
}

}  // namespace

TEST_CASE("SGD follows torch.optim.SGD step for step") {
  std::vector<kiln::test::TrajectoryCase> cases;
  cases.push_back(sgd_case("plain", "\"lr\": 0.1", {.lr = 0.1}));
  cases.push_back(sgd_case("weight_decay", "\"lr\": 0.05, \"weight_decay\": 0.3", {.lr = 0.05, .weight_decay = 0.3}));
  cases.push_back(sgd_case("momentum", "\"lr\": 0.05, \"momentum\": 0.9", {.lr = 0.05, .momentum = 0.9}));
  cases.push_back(sgd_case("momentum_dampening", "\"lr\": 0.05, \"momentum\": 0.8, \"dampening\": 0.3",
                           {.lr = 0.05, .momentum = 0.8, .dampening = 0.3}));
  cases.push_back(sgd_case("nesterov_decay", "\"lr\": 0.02, \"momentum\": 0.9, \"nesterov\": true, \"weight_decay\": 0.01",
                           {.lr = 0.02, .momentum = 0.9, .weight_decay = 0.01, .nesterov = true}));
  cases.push_back(sgd_case("maximize_momentum", "\"lr\": 0.03, \"momentum\": 0.5, \"maximize\": true, \"weight_decay\": 0.1",
                           {.lr = 0.03, .momentum = 0.5, .weight_decay = 0.1, .maximize = true}));
  {
    // Some parameters lack a gradient on some steps: they and their momentum buffers stay put,
    // and a parameter's first gradient starts its buffer (PyTorch's first-step rule).
    auto c = sgd_case("missing_grads", "\"lr\": 0.05, \"momentum\": 0.9, \"dampening\": 0.5",
                      {.lr = 0.05, .momentum = 0.9, .dampening = 0.5});
    c.missing = [](int step, std::size_t param) { return (param == 1 && step < 3) || (param == 2 && step % 3 == 1); };
    cases.push_back(c);
  }
  {
    // Large enough to be updated in chunks (parameter 0), and threaded.
    auto c = sgd_case("large_nesterov", "\"lr\": 0.01, \"momentum\": 0.9, \"nesterov\": true",
                      {.lr = 0.01, .momentum = 0.9, .nesterov = true});
    c.shapes = {{600, 500}, {40000}, {7}};
    c.steps = 5;
    cases.push_back(c);
  }
  {
    // A transposed (non-contiguous) parameter and non-contiguous gradients take the unchunked path.
    auto c = sgd_case("strided", "\"lr\": 0.05, \"momentum\": 0.7, \"weight_decay\": 0.05",
                      {.lr = 0.05, .momentum = 0.7, .weight_decay = 0.05});
    c.shapes = {{200, 90}, {5}, {2, 3, 2}};
    c.transposed_param = true;
    c.transposed_grads = true;
    cases.push_back(c);
  }
  {
    // Two groups with their own hyper-parameters.
    kiln::test::TrajectoryCase c;
    c.name = "groups";
    c.torch_optimizer = "SGD";
    c.torch_groups = "[{\"params\": [0, 2], \"lr\": 0.1, \"momentum\": 0.9}, {\"params\": [1], \"lr\": 0.01, \"weight_decay\": 0.5}]";
    c.make = [](const Parameters& p) {
      std::vector<SGD::ParamGroup> groups;
      groups.push_back({{p[0], p[2]}, {.lr = 0.1, .momentum = 0.9}});
      groups.push_back({{p[1]}, {.lr = 0.01, .weight_decay = 0.5}});
      return std::make_unique<SGD>(std::move(groups));
    };
    cases.push_back(c);
  }
  kiln::test::compare_with_torch("sgd", cases);
}

TEST_CASE("SGD momentum by hand") {
  // p0 = 1, g = 2 then 4, lr 0.1, momentum 0.5, dampening 0.5:
  //   step 1: b = 2 (first step: no dampening), p = 1 - 0.2 = 0.8
  //   step 2: b = 0.5·2 + 0.5·4 = 3, p = 0.8 - 0.3 = 0.5
  auto p = kiln::full<float>({1}, 1.0f).requires_grad();
  SGD opt({p}, {.lr = 0.1, .momentum = 0.5, .dampening = 0.5});
  p.set_grad(kiln::full<float>({1}, 2.0f));
  opt.step();
  CHECK(p.item() == doctest::Approx(0.8).epsilon(1e-7));
  CHECK(opt.state(0).tensors.at("momentum_buffer").item() == 2.0f);
  p.set_grad(kiln::full<float>({1}, 4.0f));
  opt.step();
  CHECK(opt.state(0).tensors.at("momentum_buffer").item() == 3.0f);
  CHECK(p.item() == doctest::Approx(0.5).epsilon(1e-7));
  CHECK(opt.state(0).step == 2);
  CHECK(opt.step_count() == 2);
}

TEST_CASE("SGD rejects invalid hyper-parameters") {
  auto p = kiln::zeros<float>({2}).requires_grad();
  CHECK_THROWS_AS(SGD({p}, {.lr = -1.0}), kiln::ValueError);
  CHECK_THROWS_AS(SGD({p}, {.momentum = -0.1}), kiln::ValueError);
  CHECK_THROWS_AS(SGD({p}, {.weight_decay = -0.1}), kiln::ValueError);
  CHECK_THROWS_WITH_AS(SGD({p}, {.lr = 0.1, .nesterov = true}), doctest::Contains("Nesterov"), kiln::ValueError);
  CHECK_THROWS_AS(SGD({p}, {.lr = 0.1, .momentum = 0.9, .dampening = 0.1, .nesterov = true}), kiln::ValueError);
}
