// Tests of kiln/optim/optimizer.hpp: state dicts (a save after 3 steps, loaded into a fresh
// optimizer, continues bit-exactly like 6 uninterrupted steps), parameter groups, zero_grad, the
// learning rate, thread-count independence, errors, and a small training run with backward().
#include <kiln/optim/optim.hpp>

#include <kiln/autograd/fused.hpp>
#include <kiln/backend/cpu/thread_pool.hpp>
#include <kiln/core/factories.hpp>
#include <kiln/core/philox.hpp>
#include <kiln/ops/reduce.hpp>

#include <doctest/doctest.h>

#include <string>
#include <vector>

using kiln::Shape;
using kiln::Tensor;
using kiln::optim::Parameters;
using kiln::optim::StateDict;

namespace {

const std::vector<Shape> shapes = {{20, 30}, {270000}, {4}};

Parameters fresh_params(const std::vector<Tensor<float>>& values) {
  Parameters params;
  for (const auto& v : values) params.push_back(v.detach().clone().requires_grad());
  return params;
}

// What a checkpoint does: every tensor to plain floats and back, counters and numbers copied.
StateDict through_plain_data(const StateDict& dict) {
  StateDict copy = dict;
  for (auto& [name, t] : copy.tensors) t = kiln::from_vector<float>(t.to_vector(), t.shape());
  return copy;
}

void set_grads(const Parameters& params, const std::vector<std::vector<Tensor<float>>>& grads, int step) {
  for (std::size_t i = 0; i < params.size(); ++i) {
    params[i].zero_grad();
    // Parameter 2 gets no gradient on steps 1 and 4, so its step count lags behind.
    if (i == 2 && (step == 1 || step == 4)) continue;
    params[i].set_grad(grads[static_cast<std::size_t>(step)][i]);
  }
}

template <class Opt, class Options>
void check_round_trip(const Options& options, const Options& other_options) {
  kiln::Rng rng(11);
  std::vector<Tensor<float>> initial;
  for (const auto& s : shapes) initial.push_back(kiln::randn<float>(s, rng));
  std::vector<std::vector<Tensor<float>>> grads(6);
  for (auto& g : grads)
    for (const auto& s : shapes) g.push_back(kiln::randn<float>(s, rng));

  Parameters uninterrupted = fresh_params(initial);
  Opt a(uninterrupted, options);
  for (int s = 0; s < 6; ++s) {
    set_grads(uninterrupted, grads, s);
    a.step();
  }

  Parameters first_half = fresh_params(initial);
  Opt b(first_half, options);
  for (int s = 0; s < 3; ++s) {
    set_grads(first_half, grads, s);
    b.step();
  }
  const StateDict saved = through_plain_data(b.state_dict());
  CHECK(saved.kind == a.kind());
  CHECK(saved.counters.at("step") == 3);

  // A fresh optimizer with other hyper-parameters over a copy of the parameters: loading restores
  // the buffers, the step counts and the hyper-parameters.
  Parameters resumed = fresh_params(first_half);
  Opt c(resumed, other_options);
  c.load_state_dict(saved);
  CHECK(c.lr() == options.lr);
  CHECK(c.step_count() == 3);
  for (int s = 3; s < 6; ++s) {
    set_grads(resumed, grads, s);
    c.step();
  }
  for (std::size_t i = 0; i < shapes.size(); ++i) {
    CHECK(resumed[i].to_vector() == uninterrupted[i].to_vector());
    CHECK(c.state(i).step == a.state(i).step);
    REQUIRE(c.state(i).tensors.size() == a.state(i).tensors.size());
    for (const auto& [name, t] : a.state(i).tensors) CHECK(c.state(i).tensors.at(name).to_vector() == t.to_vector());
  }
  CHECK(c.state(2).step == 4);
  const StateDict final_dict = c.state_dict();
  CHECK(final_dict.counters.at("state.2.step") == 4);
  CHECK(final_dict.counters.at("state.0.step") == 6);
  // The loaded dict was copied, not shared: stepping on did not change it.
  CHECK(saved.counters.at("step") == 3);
}

}  // namespace

TEST_CASE("a state dict saved after 3 steps continues bit-exactly") {
  SUBCASE("SGD") {
    check_round_trip<kiln::optim::SGD>(kiln::optim::SGDOptions{.lr = 0.1, .momentum = 0.9, .dampening = 0.1},
                                       kiln::optim::SGDOptions{.lr = 0.5});
  }
  SUBCASE("SGD nesterov") {
    check_round_trip<kiln::optim::SGD>(
        kiln::optim::SGDOptions{.lr = 0.1, .momentum = 0.9, .weight_decay = 0.01, .nesterov = true},
        kiln::optim::SGDOptions{.lr = 0.5, .momentum = 0.2});
  }
  SUBCASE("Adam amsgrad") {
    check_round_trip<kiln::optim::Adam>(kiln::optim::AdamOptions{.lr = 0.01, .weight_decay = 0.1, .amsgrad = true},
                                        kiln::optim::AdamOptions{.lr = 0.3, .beta1 = 0.5, .amsgrad = true});
  }
  SUBCASE("AdamW") {
    check_round_trip<kiln::optim::AdamW>(kiln::optim::AdamWOptions{.lr = 0.01, .beta2 = 0.99},
                                         kiln::optim::AdamWOptions{.lr = 1.0, .weight_decay = 0.5});
  }
  SUBCASE("RMSprop centered momentum") {
    check_round_trip<kiln::optim::RMSprop>(
        kiln::optim::RMSpropOptions{.lr = 0.01, .weight_decay = 0.01, .momentum = 0.9, .centered = true},
        kiln::optim::RMSpropOptions{.lr = 0.2, .alpha = 0.5});
  }
}

TEST_CASE("state dicts name their buffers and groups") {
  auto w = kiln::zeros<float>({2, 3}).requires_grad();
  auto b = kiln::zeros<float>({3}).requires_grad();
  auto unused = kiln::zeros<float>({5}).requires_grad();
  std::vector<kiln::optim::Adam::ParamGroup> groups;
  groups.push_back({{w, unused}, {.lr = 0.01, .amsgrad = true}});
  groups.push_back({{b}, {.lr = 0.02, .beta2 = 0.9}});
  kiln::optim::Adam opt(std::move(groups));
  w.set_grad(kiln::ones<float>({2, 3}));
  b.set_grad(kiln::ones<float>({3}));
  opt.step();
  const StateDict dict = opt.state_dict();
  std::vector<std::string> names;
  for (const auto& [name, t] : dict.tensors) names.push_back(name);
  // w is parameter 0, unused 1 (never had a gradient: no state), b 2.
  CHECK(names == std::vector<std::string>{"state.0.exp_avg", "state.0.exp_avg_sq", "state.0.max_exp_avg_sq",
                                          "state.2.exp_avg", "state.2.exp_avg_sq"});
  CHECK(dict.counters.at("state.0.step") == 1);
  CHECK(dict.counters.count("state.1.step") == 0);
  REQUIRE(dict.groups.size() == 2);
  CHECK(dict.groups[0].params == std::vector<std::size_t>{0, 1});
  CHECK(dict.groups[1].params == std::vector<std::size_t>{2});
  CHECK(dict.groups[0].hyper_parameters.at("amsgrad") == 1.0);
  CHECK(dict.groups[1].hyper_parameters.at("beta2") == 0.9);
  CHECK(dict.groups[1].hyper_parameters.at("lr") == 0.02);
  // The dict's tensors are the live buffers.
  CHECK(dict.tensors.at("state.0.exp_avg").storage() == opt.state(0).tensors.at("exp_avg").storage());
}

TEST_CASE("load_state_dict rejects a state that does not fit, and changes nothing then") {
  auto w = kiln::zeros<float>({2, 3}).requires_grad();
  kiln::optim::Adam opt({w}, {.lr = 0.01});
  w.set_grad(kiln::ones<float>({2, 3}));
  opt.step();
  const StateDict good = opt.state_dict();
  const auto before = opt.state(0).tensors.at("exp_avg").to_vector();

  auto other = kiln::zeros<float>({2, 3}).requires_grad();
  kiln::optim::Adam fresh({other}, {.lr = 0.5});
  {
    StateDict bad = good;
    bad.kind = "SGD";
    CHECK_THROWS_WITH_AS(fresh.load_state_dict(bad), doctest::Contains("'SGD'"), kiln::ValueError);
  }
  {
    StateDict bad = good;
    bad.tensors["state.0.exp_avg"] = kiln::zeros<float>({3, 2});
    CHECK_THROWS_WITH_AS(fresh.load_state_dict(bad), doctest::Contains("state.0.exp_avg"), kiln::ShapeError);
  }
  {
    StateDict bad = good;
    bad.tensors["state.0.momentum"] = kiln::zeros<float>({2, 3});
    CHECK_THROWS_WITH_AS(fresh.load_state_dict(bad), doctest::Contains("not a buffer of Adam"), kiln::ValueError);
  }
  {
    StateDict bad = good;
    bad.tensors["state.7.exp_avg"] = kiln::zeros<float>({2, 3});
    CHECK_THROWS_WITH_AS(fresh.load_state_dict(bad), doctest::Contains("parameter 7"), kiln::ValueError);
  }
  {
    StateDict bad = good;
    bad.groups[0].hyper_parameters["beta1"] = 1.5;
    CHECK_THROWS_WITH_AS(fresh.load_state_dict(bad), doctest::Contains("beta1"), kiln::ValueError);
  }
  {
    StateDict bad = good;
    bad.groups[0].hyper_parameters.erase("eps");
    CHECK_THROWS_WITH_AS(fresh.load_state_dict(bad), doctest::Contains("'eps'"), kiln::ValueError);
  }
  {
    StateDict bad = good;
    bad.counters.erase("step");
    CHECK_THROWS_AS(fresh.load_state_dict(bad), kiln::ValueError);
  }
  {
    StateDict bad = good;
    bad.groups.push_back(bad.groups[0]);
    CHECK_THROWS_WITH_AS(fresh.load_state_dict(bad), doctest::Contains("2 parameter groups"), kiln::ValueError);
  }
  // Nothing was loaded by the failed attempts.
  CHECK(fresh.lr() == 0.5);
  CHECK(fresh.state(0).tensors.empty());
  CHECK(fresh.step_count() == 0);
  fresh.load_state_dict(good);
  CHECK(fresh.state(0).tensors.at("exp_avg").to_vector() == before);
  CHECK(fresh.lr() == 0.01);
}

TEST_CASE("parameter groups, learning rates and zero_grad") {
  auto a = kiln::ones<float>({3}).requires_grad();
  auto b = kiln::ones<float>({2}).requires_grad();
  auto c = kiln::ones<float>({1}).requires_grad();
  kiln::optim::SGD opt({a, b}, {.lr = 0.1});
  opt.add_param_group({c}, {.lr = 1.0});
  CHECK(opt.num_groups() == 2);
  CHECK(opt.num_params() == 3);
  CHECK(opt.lr() == 0.1);
  CHECK(opt.lr(1) == 1.0);
  CHECK(opt.params()[2].storage() == c.storage());

  a.set_grad(kiln::ones<float>({3}));
  c.set_grad(kiln::ones<float>({1}));
  opt.step();
  // b had no gradient: untouched; a moved by lr 0.1, c by lr 1.
  CHECK(a.to_vector() == std::vector<float>{0.9f, 0.9f, 0.9f});
  CHECK(b.to_vector() == std::vector<float>{1.0f, 1.0f});
  CHECK(c.item() == 0.0f);
  // The update happened in the tensors the caller holds, which are still leaves.
  CHECK(a.is_leaf());
  CHECK(a.tracks_grad());

  opt.set_lr(0.5);
  CHECK(opt.lr(0) == 0.5);
  CHECK(opt.lr(1) == 0.5);
  opt.set_lr(1, 2.0);
  CHECK(opt.lr(1) == 2.0);
  CHECK(opt.options(1).lr == 2.0);
  CHECK_THROWS_AS(opt.set_lr(-1.0), kiln::ValueError);
  CHECK_THROWS_WITH_AS(opt.lr(2), doctest::Contains("group 2"), kiln::ValueError);

  opt.zero_grad();
  CHECK(!a.grad().defined());
  CHECK(!c.grad().defined());
  opt.step();  // no gradients: nothing moves
  CHECK(c.item() == 0.0f);
  CHECK(opt.step_count() == 2);
}

TEST_CASE("optimizers reject duplicate and undefined parameters") {
  auto a = kiln::ones<float>({3}).requires_grad();
  CHECK_THROWS_WITH_AS(kiln::optim::SGD({a, a}), doctest::Contains("same tensor"), kiln::ValueError);
  kiln::optim::SGD opt({a});
  CHECK_THROWS_WITH_AS(opt.add_param_group({a}, {}), doctest::Contains("another parameter group"), kiln::ValueError);
  CHECK_THROWS_WITH_AS(kiln::optim::Adam({Tensor<float>()}), doctest::Contains("undefined"), kiln::ValueError);
  // Two views of one buffer are different parameters.
  auto whole = kiln::ones<float>({4, 2});
  CHECK_NOTHROW(kiln::optim::SGD({whole.select(0, 0), whole.select(0, 1)}));
}

TEST_CASE("the result does not depend on the number of threads") {
  kiln::Rng rng(3);
  // More than one update chunk (2^18 elements), each expression split over the threads.
  const auto initial = kiln::randn<float>({700, 400}, rng);
  const auto grad = kiln::randn<float>({700, 400}, rng);
  auto run = [&](int threads) {
    kiln::backend::cpu::set_num_threads(threads);
    auto p = initial.clone().requires_grad();
    kiln::optim::Adam opt({p}, {.lr = 0.01, .amsgrad = true});
    for (int s = 0; s < 3; ++s) {
      p.set_grad(grad);
      opt.step();
    }
    return p.to_vector();
  };
  const auto one = run(1);
  const auto three = run(3);
  kiln::backend::cpu::set_num_threads(kiln::backend::cpu::detail::default_thread_count());
  CHECK(one == three);
}

TEST_CASE("Adam minimises a quadratic with gradients from backward()") {
  // loss = Σ (w - target)² · scale; the minimum is w = target.
  kiln::Rng rng(5);
  auto w = kiln::randn<float>({4, 5}, rng).requires_grad();
  const auto target = kiln::randn<float>({4, 5}, rng);
  const auto scale = kiln::rand<float>({4, 5}, rng, 0.5f, 2.0f);
  kiln::optim::Adam opt({w}, {.lr = 0.1});
  kiln::optim::ExponentialLR schedule(opt, 0.995);
  float first_loss = 0.0f, loss_value = 0.0f;
  for (int s = 0; s < 600; ++s) {
    opt.zero_grad();
    auto loss = kiln::sum(kiln::square(w - target) * scale);
    loss_value = loss.item();
    if (s == 0) first_loss = loss_value;
    loss.backward();
    opt.step();
    schedule.step();
  }
  CHECK(loss_value < 1e-4f * first_loss);
  const auto got = w.to_vector(), want = target.to_vector();
  for (std::size_t i = 0; i < got.size(); ++i) CHECK(got[i] == doctest::Approx(want[i]).epsilon(1e-2));
}

TEST_CASE("a gradient made with create_graph is used detached") {
  auto w = kiln::from_vector<float>({1.0f, 2.0f}).requires_grad();
  auto loss = kiln::sum(kiln::square(w));
  loss.backward(false, true);  // grad = 2w, itself tracked
  REQUIRE(w.grad().defined());
  kiln::optim::SGD opt({w}, {.lr = 0.25});
  opt.step();
  CHECK(w.to_vector() == std::vector<float>{0.5f, 1.0f});
  // A tracked gradient keeps its graph, which holds w: a cycle w → grad → graph → w (as in
  // PyTorch) that only dropping the gradient breaks.
  opt.zero_grad();
}
