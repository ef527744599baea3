// kiln/optim/optim.hpp — everything kiln::optim offers: SGD, Adam, AdamW, RMSprop, learning-rate
// schedules, gradient clipping and the exponential moving average of weights.
// Builds on the headers of include/kiln/optim.
#pragma once

#include <kiln/optim/adam.hpp>
#include <kiln/optim/clip.hpp>
#include <kiln/optim/ema.hpp>
#include <kiln/optim/optimizer.hpp>
#include <kiln/optim/rmsprop.hpp>
#include <kiln/optim/schedule.hpp>
#include <kiln/optim/sgd.hpp>
