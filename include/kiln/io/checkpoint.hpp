// kiln/io/checkpoint.hpp — training checkpoints (module weights and buffers, optimizer state, RNG
// state, step and user values) in one safetensors file written atomically (temporary file, fsync,
// rename), so a crash during a save never loses the previous checkpoint; resuming continues bit for
// bit. Also save_module/load_module for plain weight files PyTorch can read.
// Builds on io/safetensors.hpp, nn/module.hpp and optim/optimizer.hpp.
#pragma once

#include <kiln/core/philox.hpp>
#include <kiln/io/safetensors.hpp>
#include <kiln/nn/module.hpp>
#include <kiln/optim/optimizer.hpp>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace kiln::io {

// What a training loop needs besides the weights and the optimizer to continue exactly.
struct TrainingState {
  std::int64_t step = 0;
  Rng rng;                                    // e.g. the generator of dropout masks or noise
  std::map<std::string, std::string> values;  // anything else (best metric, epoch, ...)
};

namespace detail {

inline constexpr const char* checkpoint_format = "kiln-checkpoint-1";

inline std::string exact_number(double v) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

// "a=1;b=2.5" <-> map (keys never contain '=' or ';': they are kiln's own names).
template <class V, class F>
std::string encode_pairs(const std::map<std::string, V>& m, F to_text) {
  std::string out;
  for (const auto& [k, v] : m) {
    if (!out.empty()) out += ';';
    out += k + "=" + to_text(v);
  }
  return out;
}
inline std::vector<std::pair<std::string, std::string>> decode_pairs(const std::string& text, const std::string& file,
                                                                     const std::string& field) {
  std::vector<std::pair<std::string, std::string>> out;
  std::size_t pos = 0;
  while (pos < text.size()) {
    std::size_t end = text.find(';', pos);
    if (end == std::string::npos) end = text.size();
    const std::string item = text.substr(pos, end - pos);
    const std::size_t eq = item.find('=');
    if (eq == std::string::npos || eq == 0)
      throw FormatError("kiln::load_checkpoint: " + file + ": metadata '" + field + "' is malformed near '" + item + "'");
    out.emplace_back(item.substr(0, eq), item.substr(eq + 1));
    pos = end + 1;
  }
  return out;
}
inline double parse_number(const std::string& s, const std::string& file, const std::string& field) {
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  if (s.empty() || end != s.c_str() + s.size())
    throw FormatError("kiln::load_checkpoint: " + file + ": metadata '" + field + "' holds '" + s +
                      "', which is not a number");
  return v;
}
inline std::int64_t parse_integer(const std::string& s, const std::string& file, const std::string& field) {
  char* end = nullptr;
  const long long v = std::strtoll(s.c_str(), &end, 10);
  if (s.empty() || end != s.c_str() + s.size())
    throw FormatError("kiln::load_checkpoint: " + file + ": metadata '" + field + "' holds '" + s +
                      "', which is not an integer");
  return v;
}
inline std::uint64_t parse_unsigned(const std::string& s, const std::string& file, const std::string& field) {
  char* end = nullptr;
  const unsigned long long v = std::strtoull(s.c_str(), &end, 10);
  if (s.empty() || end != s.c_str() + s.size())
    throw FormatError("kiln::load_checkpoint: " + file + ": metadata '" + field + "' holds '" + s +
                      "', which is not an unsigned integer");
  return v;
}
inline const std::string& require_metadata(const std::map<std::string, std::string>& meta, const std::string& key,
                                           const std::string& file) {
  auto it = meta.find(key);
  if (it == meta.end())
    throw FormatError("kiln::load_checkpoint: " + file + ": the metadata has no '" + key +
                      "' entry (not a kiln checkpoint, or a damaged one)");
  return it->second;
}

}  // namespace detail

// Writes the module's state dict (names as PyTorch's) to a safetensors file, atomically.
template <class T>
void save_module(const std::string& path, const nn::BasicModule<T, cpu>& module,
                 const std::map<std::string, std::string>& metadata = {}) {
  std::vector<std::pair<std::string, Tensor<T>>> entries;
  for (const auto& [name, t] : module.state_dict()) entries.emplace_back(name, t);
  save_safetensors(path, entries, metadata, std::is_same_v<T, double> ? DType::F64 : DType::F32);
}

// Loads weights saved by save_module (or by PyTorch's safetensors) into `module`; strict: every
// entry must match by name and shape.
template <class T>
nn::LoadStateDictResult load_module(const std::string& path, nn::BasicModule<T, cpu>& module, bool strict = true) {
  SafeTensorsFile file(path);
  nn::StateDict<T, cpu> dict;
  for (const auto& name : file.names()) dict.insert(name, file.template get<T>(name));
  return module.load_state_dict(dict, strict);
}

// Saves model, optimizer and training state to `path` atomically: the previous file stays intact
// until the new one is complete on disk.
template <class T>
void save_checkpoint(const std::string& path, const nn::BasicModule<T, cpu>& model, const optim::Optimizer& optimizer,
                     const TrainingState& state) {
  std::vector<std::pair<std::string, Tensor<T>>> entries;
  for (const auto& [name, t] : model.state_dict()) entries.emplace_back("model." + name, t);
  const optim::StateDict od = optimizer.state_dict();
  for (const auto& [name, t] : od.tensors) entries.emplace_back("optim." + name, t.template to<T>());
  std::map<std::string, std::string> meta;
  meta["format"] = detail::checkpoint_format;
  meta["step"] = std::to_string(state.step);
  const RngState rs = state.rng.state();
  meta["rng"] = std::to_string(rs.seed) + "," + std::to_string(rs.offset) + "," + std::to_string(rs.subsequence);
  meta["optim.kind"] = od.kind;
  meta["optim.counters"] = detail::encode_pairs(od.counters, [](std::int64_t v) { return std::to_string(v); });
  meta["optim.values"] = detail::encode_pairs(od.values, [](double v) { return detail::exact_number(v); });
  meta["optim.groups"] = std::to_string(od.groups.size());
  for (std::size_t g = 0; g < od.groups.size(); ++g) {
    std::string params;
    for (std::size_t i : od.groups[g].params) params += (params.empty() ? "" : ",") + std::to_string(i);
    meta["optim.group." + std::to_string(g) + ".params"] = params;
    meta["optim.group." + std::to_string(g) + ".hyper"] =
        detail::encode_pairs(od.groups[g].hyper_parameters, [](double v) { return detail::exact_number(v); });
  }
  for (const auto& [k, v] : state.values) meta["value." + k] = v;
  save_safetensors(path, entries, meta, std::is_same_v<T, double> ? DType::F64 : DType::F32);
}

// Restores what save_checkpoint wrote into `model` and `optimizer` and returns the training state.
// Nothing is changed when the file is unreadable or does not fit the model and optimizer.
template <class T>
TrainingState load_checkpoint(const std::string& path, nn::BasicModule<T, cpu>& model, optim::Optimizer& optimizer) {
  SafeTensorsFile file(path);
  const auto& meta = file.metadata();
  if (detail::require_metadata(meta, "format", path) != detail::checkpoint_format)
    throw FormatError("kiln::load_checkpoint: " + path + ": format '" + meta.at("format") + "', expected '" +
                      detail::checkpoint_format + "'");
  TrainingState state;
  state.step = detail::parse_integer(detail::require_metadata(meta, "step", path), path, "step");
  {
    const std::string& r = detail::require_metadata(meta, "rng", path);
    const std::size_t a = r.find(','), b = r.find(',', a == std::string::npos ? a : a + 1);
    if (a == std::string::npos || b == std::string::npos)
      throw FormatError("kiln::load_checkpoint: " + path + ": metadata 'rng' is malformed: '" + r + "'");
    RngState rs;
    rs.seed = detail::parse_unsigned(r.substr(0, a), path, "rng");
    rs.offset = detail::parse_unsigned(r.substr(a + 1, b - a - 1), path, "rng");
    rs.subsequence = detail::parse_unsigned(r.substr(b + 1), path, "rng");
    state.rng = Rng(rs);
  }
  nn::StateDict<T, cpu> model_dict;
  optim::StateDict od;
  for (const auto& name : file.names()) {
    if (name.rfind("model.", 0) == 0)
      model_dict.insert(name.substr(6), file.template get<T>(name));
    else if (name.rfind("optim.", 0) == 0)
      od.tensors[name.substr(6)] = file.template get<float>(name);
    else
      throw FormatError("kiln::load_checkpoint: " + path + ": unexpected tensor '" + name + "'");
  }
  od.kind = detail::require_metadata(meta, "optim.kind", path);
  for (const auto& [k, v] : detail::decode_pairs(detail::require_metadata(meta, "optim.counters", path), path,
                                                 "optim.counters"))
    od.counters[k] = detail::parse_integer(v, path, "optim.counters");
  for (const auto& [k, v] :
       detail::decode_pairs(detail::require_metadata(meta, "optim.values", path), path, "optim.values"))
    od.values[k] = detail::parse_number(v, path, "optim.values");
  const std::int64_t groups =
      detail::parse_integer(detail::require_metadata(meta, "optim.groups", path), path, "optim.groups");
  if (groups < 0 || groups > 1000000)
    throw FormatError("kiln::load_checkpoint: " + path + ": implausible number of parameter groups");
  for (std::int64_t g = 0; g < groups; ++g) {
    optim::ParamGroupState gs;
    const std::string key = "optim.group." + std::to_string(g);
    const std::string& params = detail::require_metadata(meta, key + ".params", path);
    std::size_t pos = 0;
    while (pos < params.size()) {
      std::size_t end = params.find(',', pos);
      if (end == std::string::npos) end = params.size();
      gs.params.push_back(static_cast<std::size_t>(detail::parse_unsigned(params.substr(pos, end - pos), path, key)));
      pos = end + 1;
    }
    for (const auto& [k, v] : detail::decode_pairs(detail::require_metadata(meta, key + ".hyper", path), path, key))
      gs.hyper_parameters[k] = detail::parse_number(v, path, key);
    od.groups.push_back(std::move(gs));
  }
  for (const auto& [k, v] : meta)
    if (k.rfind("value.", 0) == 0) state.values[k.substr(6)] = v;
  // Check the model part against a copy first, so a failing optimizer load leaves both unchanged.
  const nn::StateDict<T, cpu> before = model.state_dict();
  std::vector<std::pair<std::string, Tensor<T>>> saved;
  for (const auto& [name, t] : before) saved.emplace_back(name, t.clone());
  model.load_state_dict(model_dict, true);
  try {
    optimizer.load_state_dict(od);
  } catch (...) {
    nn::StateDict<T, cpu> restore;
    for (auto& [name, t] : saved) restore.insert(name, t);
    model.load_state_dict(restore, true);
    throw;
  }
  return state;
}

}  // namespace kiln::io
