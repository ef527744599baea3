// kiln/kiln.hpp — everything kiln offers on the CPU: tensors, lazy fused expressions,
// reductions, matmul, random numbers, automatic differentiation.
// Builds on the headers of include/kiln and backends/cpu.
#pragma once

#include <kiln/version.hpp>

#include <kiln/core/bfloat16.hpp>
#include <kiln/core/config.hpp>
#include <kiln/core/device.hpp>
#include <kiln/core/error.hpp>
#include <kiln/core/factories.hpp>
#include <kiln/core/philox.hpp>
#include <kiln/core/print.hpp>
#include <kiln/core/shape.hpp>
#include <kiln/core/tensor.hpp>

#include <kiln/expr/eval.hpp>
#include <kiln/expr/expr.hpp>
#include <kiln/expr/math.hpp>
#include <kiln/expr/ops.hpp>
#include <kiln/expr/reduce.hpp>

#include <kiln/autograd/fused.hpp>
#include <kiln/autograd/graph.hpp>

#include <kiln/ops/matmul.hpp>
#include <kiln/ops/reduce.hpp>

#include <kiln/backend/cpu/backend.hpp>
