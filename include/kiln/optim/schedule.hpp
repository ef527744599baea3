// kiln/optim/schedule.hpp — learning-rate schedules as torch.optim.lr_scheduler: StepLR,
// ExponentialLR, CosineAnnealingLR (closed form), and LinearWarmup in front of another schedule.
// Each is a closed-form function lr_at(step) and an object with step()/get_lr() that can drive
// the learning rates of an optimizer's groups. Builds on optim/optimizer.hpp.
#pragma once

#include <kiln/optim/optimizer.hpp>

#include <cmath>
#include <cstdint>
#include <memory>
#include <numbers>
#include <string>
#include <vector>

namespace kiln::optim {

// A learning-rate schedule: lr_at(step, base_lr) in closed form, and a current step (0 after
// construction, like PyTorch's schedulers after their initial step). Driving an optimizer, the
// schedule sets the lr of each group g to lr_at(step, base_lrs()[g]) at construction and at every
// step(); the base lrs are the groups' lrs when the schedule was made. The optimizer must outlive
// the schedule and not move.
class LRSchedule {
 public:
  virtual ~LRSchedule() = default;

  // The learning rate at `step` for a group whose base learning rate is base_lr.
  virtual double lr_at(std::int64_t step, double base_lr) const = 0;
  // The learning rate of the first group at `step`.
  double lr_at(std::int64_t step) const { return lr_at(step, base_lrs_.at(0)); }
  // A copy of this schedule (same optimizer, base lrs and step).
  virtual std::unique_ptr<LRSchedule> clone() const = 0;

  // Moves on by one step and applies the new learning rates.
  void step() { set_last_step(last_step_ + 1); }
  // The learning rate of the first group at the current step (PyTorch's get_last_lr()[0]).
  double get_lr() const { return lr_at(last_step_); }
  // The learning rate of every group at the current step.
  std::vector<double> get_lrs() const {
    std::vector<double> lrs;
    for (double base : base_lrs_) lrs.push_back(lr_at(last_step_, base));
    return lrs;
  }
  std::int64_t last_step() const { return last_step_; }
  // Jumps to `step` (e.g. when resuming from a checkpoint) and applies its learning rates.
  void set_last_step(std::int64_t step) {
    if (step < 0) throw ValueError("kiln::optim::LRSchedule: the step must be non-negative, got " + std::to_string(step));
    last_step_ = step;
    apply();
  }
  const std::vector<double>& base_lrs() const { return base_lrs_; }
  Optimizer* optimizer() const { return optimizer_; }

  // {kind, counters {"last_step"}, values {"base_lr.<group>"}}: enough to resume.
  StateDict state_dict() const {
    StateDict dict;
    dict.kind = name();
    dict.counters["last_step"] = last_step_;
    for (std::size_t g = 0; g < base_lrs_.size(); ++g) dict.values["base_lr." + std::to_string(g)] = base_lrs_[g];
    return dict;
  }
  void load_state_dict(const StateDict& dict) {
    if (dict.kind != name())
      throw ValueError("kiln::optim::" + std::string(name()) + "::load_state_dict: the state dict belongs to a '" +
                       dict.kind + "' schedule");
    const auto step = dict.counters.find("last_step");
    if (step == dict.counters.end())
      throw ValueError("kiln::optim::" + std::string(name()) + "::load_state_dict: no 'last_step' counter");
    std::vector<double> bases;
    for (std::size_t g = 0;; ++g) {
      const auto it = dict.values.find("base_lr." + std::to_string(g));
      if (it == dict.values.end()) break;
      bases.push_back(it->second);
    }
    if (bases.size() != base_lrs_.size())
      throw ValueError("kiln::optim::" + std::string(name()) + "::load_state_dict: the state dict has " +
                       std::to_string(bases.size()) + " base learning rates, this schedule " +
                       std::to_string(base_lrs_.size()));
    base_lrs_ = bases;
    set_last_step(step->second);
  }

  // "StepLR", "ExponentialLR", ...
  virtual const char* name() const = 0;

 protected:
  // A schedule of its own, starting from base_lr.
  explicit LRSchedule(double base_lr) : base_lrs_{base_lr} {}
  // A schedule driving `optimizer`: the base lrs are its groups' current lrs.
  explicit LRSchedule(Optimizer& optimizer) : optimizer_(&optimizer) {
    for (std::size_t g = 0; g < optimizer.num_groups(); ++g) base_lrs_.push_back(optimizer.lr(g));
    if (base_lrs_.empty()) throw ValueError("kiln::optim::LRSchedule: the optimizer has no parameter groups");
  }
  LRSchedule(Optimizer* optimizer, std::vector<double> base_lrs)
      : optimizer_(optimizer), base_lrs_(std::move(base_lrs)) {}
  LRSchedule(const LRSchedule&) = default;
  LRSchedule& operator=(const LRSchedule&) = default;

  // Sets the optimizer's learning rates for the current step (called by the derived constructors).
  void apply() {
    if (!optimizer_) return;
    if (optimizer_->num_groups() != base_lrs_.size())
      throw ValueError("kiln::optim::" + std::string(name()) + ": the optimizer has " +
                       std::to_string(optimizer_->num_groups()) + " parameter groups but the schedule was made for " +
                       std::to_string(base_lrs_.size()));
    for (std::size_t g = 0; g < base_lrs_.size(); ++g) optimizer_->set_lr(g, lr_at(last_step_, base_lrs_[g]));
  }

 private:
  Optimizer* optimizer_ = nullptr;
  std::vector<double> base_lrs_;
  std::int64_t last_step_ = 0;
};

// lr = base_lr · gamma^⌊step / step_size⌋ (PyTorch's StepLR).
class StepLR : public LRSchedule {
 public:
  StepLR(Optimizer& optimizer, std::int64_t step_size, double gamma = 0.1)
      : LRSchedule(optimizer), step_size_(step_size), gamma_(gamma) {
    check();
    apply();
  }
  StepLR(double base_lr, std::int64_t step_size, double gamma = 0.1)
      : LRSchedule(base_lr), step_size_(step_size), gamma_(gamma) {
    check();
  }
  using LRSchedule::lr_at;
  double lr_at(std::int64_t step, double base_lr) const override {
    return base_lr * std::pow(gamma_, static_cast<double>(step / step_size_));
  }
  std::unique_ptr<LRSchedule> clone() const override { return std::make_unique<StepLR>(*this); }
  const char* name() const override { return "StepLR"; }

 private:
  void check() const {
    if (step_size_ <= 0) throw ValueError("kiln::optim::StepLR: step_size must be positive, got " + std::to_string(step_size_));
    if (!std::isfinite(gamma_)) throw ValueError("kiln::optim::StepLR: gamma must be finite");
  }
  std::int64_t step_size_;
  double gamma_;
};

// lr = base_lr · gamma^step (PyTorch's ExponentialLR).
class ExponentialLR : public LRSchedule {
 public:
  ExponentialLR(Optimizer& optimizer, double gamma) : LRSchedule(optimizer), gamma_(gamma) {
    check();
    apply();
  }
  ExponentialLR(double base_lr, double gamma) : LRSchedule(base_lr), gamma_(gamma) { check(); }
  using LRSchedule::lr_at;
  double lr_at(std::int64_t step, double base_lr) const override {
    return base_lr * std::pow(gamma_, static_cast<double>(step));
  }
  std::unique_ptr<LRSchedule> clone() const override { return std::make_unique<ExponentialLR>(*this); }
  const char* name() const override { return "ExponentialLR"; }

 private:
  void check() const {
    if (!std::isfinite(gamma_)) throw ValueError("kiln::optim::ExponentialLR: gamma must be finite");
  }
  double gamma_;
};

// lr = eta_min + (base_lr - eta_min)·(1 + cos(π·step / T_max)) / 2: the closed form of PyTorch's
// CosineAnnealingLR (SGDR without restarts, Loshchilov & Hutter 2017, eq. 5), which keeps following
// the cosine after T_max (back up towards base_lr).
class CosineAnnealingLR : public LRSchedule {
 public:
  CosineAnnealingLR(Optimizer& optimizer, std::int64_t t_max, double eta_min = 0.0)
      : LRSchedule(optimizer), t_max_(t_max), eta_min_(eta_min) {
    check();
    apply();
  }
  CosineAnnealingLR(double base_lr, std::int64_t t_max, double eta_min = 0.0)
      : LRSchedule(base_lr), t_max_(t_max), eta_min_(eta_min) {
    check();
  }
  using LRSchedule::lr_at;
  double lr_at(std::int64_t step, double base_lr) const override {
    return eta_min_ +
           (base_lr - eta_min_) * (1.0 + std::cos(std::numbers::pi * static_cast<double>(step) / static_cast<double>(t_max_))) /
               2.0;
  }
  std::unique_ptr<LRSchedule> clone() const override { return std::make_unique<CosineAnnealingLR>(*this); }
  const char* name() const override { return "CosineAnnealingLR"; }

 private:
  void check() const {
    if (t_max_ <= 0) throw ValueError("kiln::optim::CosineAnnealingLR: T_max must be positive, got " + std::to_string(t_max_));
    if (!std::isfinite(eta_min_)) throw ValueError("kiln::optim::CosineAnnealingLR: eta_min must be finite");
  }
  std::int64_t t_max_;
  double eta_min_;
};

// A linear warmup over the first warmup_steps steps, then another schedule started afresh:
//   step < W:  lr = base_lr · (start_factor + (1 - start_factor) · step / W)
//   step ≥ W:  lr = inner.lr_at(step - W, base_lr)
// (PyTorch: SequentialLR([LinearLR(start_factor, 1, W), inner], milestones=[W])). Without an inner
// schedule the lr stays at base_lr after the warmup. The wrapper drives the inner schedule's
// optimizer (if any) with the inner schedule's base lrs; the inner object itself is copied.
class LinearWarmup : public LRSchedule {
 public:
  LinearWarmup(const LRSchedule& inner, std::int64_t warmup_steps, double start_factor = 0.0)
      : LRSchedule(inner.optimizer(), inner.base_lrs()),
        inner_(inner.clone()),
        warmup_steps_(warmup_steps),
        start_factor_(start_factor) {
    check();
    apply();
  }
  LinearWarmup(Optimizer& optimizer, std::int64_t warmup_steps, double start_factor = 0.0)
      : LRSchedule(optimizer), warmup_steps_(warmup_steps), start_factor_(start_factor) {
    check();
    apply();
  }
  LinearWarmup(double base_lr, std::int64_t warmup_steps, double start_factor = 0.0)
      : LRSchedule(base_lr), warmup_steps_(warmup_steps), start_factor_(start_factor) {
    check();
  }
  LinearWarmup(const LinearWarmup& other)
      : LRSchedule(other),
        inner_(other.inner_ ? other.inner_->clone() : nullptr),
        warmup_steps_(other.warmup_steps_),
        start_factor_(other.start_factor_) {}
  LinearWarmup& operator=(const LinearWarmup& other) {
    if (this != &other) {
      LRSchedule::operator=(other);
      inner_ = other.inner_ ? other.inner_->clone() : nullptr;
      warmup_steps_ = other.warmup_steps_;
      start_factor_ = other.start_factor_;
    }
    return *this;
  }

  using LRSchedule::lr_at;
  double lr_at(std::int64_t step, double base_lr) const override {
    if (step < warmup_steps_)
      return base_lr * (start_factor_ + (1.0 - start_factor_) * static_cast<double>(step) /
                                            static_cast<double>(warmup_steps_));
    return inner_ ? inner_->lr_at(step - warmup_steps_, base_lr) : base_lr;
  }
  std::unique_ptr<LRSchedule> clone() const override { return std::make_unique<LinearWarmup>(*this); }
  const char* name() const override { return "LinearWarmup"; }

 private:
  void check() const {
    if (warmup_steps_ < 0)
      throw ValueError("kiln::optim::LinearWarmup: warmup_steps must be non-negative, got " + std::to_string(warmup_steps_));
    if (!(start_factor_ >= 0.0 && start_factor_ <= 1.0))
      throw ValueError("kiln::optim::LinearWarmup: start_factor must be in [0, 1], got " + std::to_string(start_factor_));
  }
  std::unique_ptr<LRSchedule> inner_;
  std::int64_t warmup_steps_;
  double start_factor_;
};

}  // namespace kiln::optim
