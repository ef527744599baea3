// kiln/nn/nn.hpp — every kiln::nn header: Module, init, Linear, activations, Dropout, Sequential.
// Builds on the headers of include/kiln/nn.
#pragma once

#include <kiln/nn/activation.hpp>
#include <kiln/nn/attention.hpp>
#include <kiln/nn/conv.hpp>
#include <kiln/nn/dropout.hpp>
#include <kiln/nn/embedding.hpp>
#include <kiln/nn/init.hpp>
#include <kiln/nn/linear.hpp>
#include <kiln/nn/module.hpp>
#include <kiln/nn/norm.hpp>
#include <kiln/nn/pool.hpp>
#include <kiln/nn/sequential.hpp>
