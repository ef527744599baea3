// Tests of kiln/optim/schedule.hpp: StepLR, ExponentialLR, CosineAnnealingLR and LinearWarmup
// against hand-computed values and against torch.optim.lr_scheduler, driving an optimizer's
// groups, and resuming from a state dict.
#include <kiln/optim/schedule.hpp>
#include <kiln/optim/sgd.hpp>

#include "optim_reference.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <fstream>
#include <numbers>
#include <sstream>
#include <string>
#include <vector>

using kiln::optim::CosineAnnealingLR;
using kiln::optim::ExponentialLR;
using kiln::optim::LinearWarmup;
using kiln::optim::LRSchedule;
using kiln::optim::StepLR;

TEST_CASE("closed forms by hand") {
  StepLR step(0.1, 3, 0.5);
  const double step_expected[] = {0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025};
  for (int s = 0; s < 8; ++s) CHECK(step.lr_at(s) == doctest::Approx(step_expected[s]).epsilon(1e-15));

  ExponentialLR exponential(0.2, 0.9);
  CHECK(exponential.lr_at(0) == 0.2);
  CHECK(exponential.lr_at(3) == doctest::Approx(0.2 * 0.729).epsilon(1e-15));

  CosineAnnealingLR cosine(1.0, 4, 0.1);
  CHECK(cosine.lr_at(0) == doctest::Approx(1.0).epsilon(1e-15));
  CHECK(cosine.lr_at(1) == doctest::Approx(0.1 + 0.9 * (1 + std::sqrt(0.5)) / 2).epsilon(1e-15));
  CHECK(cosine.lr_at(2) == doctest::Approx(0.55).epsilon(1e-15));
  CHECK(cosine.lr_at(4) == doctest::Approx(0.1).epsilon(1e-15));
  // Past T_max the closed form follows the cosine back up, as PyTorch's.
  CHECK(cosine.lr_at(6) == doctest::Approx(0.55).epsilon(1e-15));
  CHECK(cosine.lr_at(8) == doctest::Approx(1.0).epsilon(1e-15));
  // Another base lr for the same schedule.
  CHECK(cosine.lr_at(2, 2.1) == doctest::Approx(0.1 + 2.0 / 2).epsilon(1e-15));

  LinearWarmup warm(cosine, 4);
  const double warm_expected[] = {0.0, 0.25, 0.5, 0.75};
  for (int s = 0; s < 4; ++s) CHECK(warm.lr_at(s) == doctest::Approx(warm_expected[s]).epsilon(1e-15));
  for (int s = 4; s < 12; ++s) CHECK(warm.lr_at(s) == cosine.lr_at(s - 4));

  LinearWarmup warm_from_tenth(0.5, 10, 0.1);
  CHECK(warm_from_tenth.lr_at(0) == doctest::Approx(0.05).epsilon(1e-15));
  CHECK(warm_from_tenth.lr_at(5) == doctest::Approx(0.5 * (0.1 + 0.9 * 0.5)).epsilon(1e-15));
  CHECK(warm_from_tenth.lr_at(10) == 0.5);
  CHECK(warm_from_tenth.lr_at(1000) == 0.5);

  // get_lr() and step() on a schedule of its own.
  CHECK(step.get_lr() == 0.1);
  for (int s = 0; s < 3; ++s) step.step();
  CHECK(step.last_step() == 3);
  CHECK(step.get_lr() == doctest::Approx(0.05).epsilon(1e-15));
}

TEST_CASE("schedules drive the learning rates of an optimizer's groups") {
  auto a = kiln::zeros<float>({2}).requires_grad();
  auto b = kiln::zeros<float>({2}).requires_grad();
  kiln::optim::SGD opt({a}, {.lr = 0.1});
  opt.add_param_group({b}, {.lr = 1.0});
  LinearWarmup schedule(CosineAnnealingLR(opt, 10, 0.01), 5, 0.2);
  // Construction applies step 0.
  CHECK(opt.lr(0) == doctest::Approx(0.02).epsilon(1e-15));
  CHECK(opt.lr(1) == doctest::Approx(0.2).epsilon(1e-15));
  for (int s = 1; s <= 20; ++s) {
    schedule.step();
    CHECK(opt.lr(0) == schedule.lr_at(s, 0.1));
    CHECK(opt.lr(1) == schedule.lr_at(s, 1.0));
    CHECK(schedule.get_lrs() == std::vector<double>{opt.lr(0), opt.lr(1)});
  }
  CHECK(opt.lr(0) == doctest::Approx(0.01 + 0.09 * (1 + std::cos(std::numbers::pi * 15 / 10)) / 2).epsilon(1e-14));

  // Resuming: a schedule made over a fresh optimizer jumps to the saved step.
  const auto saved = schedule.state_dict();
  CHECK(saved.counters.at("last_step") == 20);
  kiln::optim::SGD fresh({a}, {.lr = 0.1});
  fresh.add_param_group({b}, {.lr = 1.0});
  LinearWarmup resumed(CosineAnnealingLR(fresh, 10, 0.01), 5, 0.2);
  resumed.load_state_dict(saved);
  CHECK(fresh.lr(0) == opt.lr(0));
  CHECK(fresh.lr(1) == opt.lr(1));
  resumed.step();
  schedule.step();
  CHECK(fresh.lr(1) == opt.lr(1));

  kiln::optim::StateDict wrong = saved;
  wrong.kind = "StepLR";
  CHECK_THROWS_AS(resumed.load_state_dict(wrong), kiln::ValueError);

  // A group added after the schedule was made is an error the next time it applies.
  auto c = kiln::zeros<float>({1}).requires_grad();
  fresh.add_param_group({c}, {.lr = 0.3});
  CHECK_THROWS_WITH_AS(resumed.step(), doctest::Contains("3 parameter groups"), kiln::ValueError);
}

TEST_CASE("invalid schedule arguments") {
  CHECK_THROWS_AS(StepLR(0.1, 0), kiln::ValueError);
  CHECK_THROWS_AS(CosineAnnealingLR(0.1, 0), kiln::ValueError);
  CHECK_THROWS_AS(LinearWarmup(0.1, -1), kiln::ValueError);
  CHECK_THROWS_AS(LinearWarmup(0.1, 10, 1.5), kiln::ValueError);
  CHECK_THROWS_AS(ExponentialLR(0.1, std::nan("")), kiln::ValueError);
  StepLR s(0.1, 2);
  CHECK_THROWS_AS(s.set_last_step(-1), kiln::ValueError);
}

TEST_CASE("schedules match torch.optim.lr_scheduler") {
  struct Case {
    std::string name, json;
    std::unique_ptr<LRSchedule> schedule;
  };
  const int steps = 40;
  std::vector<Case> cases;
  auto add = [&](std::string name, std::string scheduler, std::string kwargs, double base_lr, std::string warmup,
                 std::unique_ptr<LRSchedule> schedule) {
    std::ostringstream json;
    json.precision(17);
    json << "{\"kind\": \"schedule\", \"name\": \"" << name << "\", \"scheduler\": \"" << scheduler
         << "\", \"kwargs\": {" << kwargs << "}, \"base_lr\": " << base_lr << ", \"steps\": " << steps
         << ", \"warmup\": " << warmup << "}";
    cases.push_back({name, json.str(), std::move(schedule)});
  };
  add("step", "StepLR", "\"step_size\": 7, \"gamma\": 0.3", 0.1, "null", std::make_unique<StepLR>(0.1, 7, 0.3));
  add("exponential", "ExponentialLR", "\"gamma\": 0.93", 0.05, "null", std::make_unique<ExponentialLR>(0.05, 0.93));
  add("cosine", "CosineAnnealingLR", "\"T_max\": 15, \"eta_min\": 0.001", 0.3, "null",
      std::make_unique<CosineAnnealingLR>(0.3, 15, 0.001));
  add("warmup_cosine", "CosineAnnealingLR", "\"T_max\": 25", 0.2, "{\"steps\": 8, \"start_factor\": 0.1}",
      std::make_unique<LinearWarmup>(CosineAnnealingLR(0.2, 25), 8, 0.1));
  add("warmup_step", "StepLR", "\"step_size\": 5, \"gamma\": 0.5", 1.0, "{\"steps\": 3, \"start_factor\": 0.25}",
      std::make_unique<LinearWarmup>(StepLR(1.0, 5, 0.5), 3, 0.25));

  const std::string dir = kiln::test::make_scratch_dir("schedule");
  {
    std::ofstream out(dir + "/cases.json");
    out << "[";
    for (std::size_t i = 0; i < cases.size(); ++i) out << (i ? ", " : "") << cases[i].json;
    out << "]";
  }
  REQUIRE(kiln::test::run_torch_script("optim_reference.py", kiln::test::shell_quote(dir)) == 0);
  for (auto& c : cases) {
    INFO("schedule " << c.name);
    std::ifstream in(dir + "/" + c.name + ".txt");
    std::vector<double> torch_lrs;
    for (double v; in >> v;) torch_lrs.push_back(v);
    REQUIRE(torch_lrs.size() == steps + 1);
    for (int s = 0; s <= steps; ++s) {
      // PyTorch computes these schedules recursively (lr ← lr·factor), kiln in closed form: the
      // two agree to rounding.
      CHECK(c.schedule->get_lr() == doctest::Approx(torch_lrs[static_cast<std::size_t>(s)]).epsilon(1e-12).scale(1e-3));
      c.schedule->step();
    }
  }
  std::filesystem::remove_all(dir);
}
