// kiln/metrics/logger.hpp — MetricsLogger: appends each evaluation (a step and named values) to JSONL
// and/or CSV files that survive a restart, mirrors it to TensorBoard, and flags metrics that drift.
// Builds on io/json.hpp (JSON lines), io/tensorboard.hpp (TensorBoardWriter), io/safetensors.hpp
// (FileError, read_file_bytes, write_file_atomic) and POSIX files.
#pragma once

#include <kiln/core/error.hpp>
#include <kiln/io/json.hpp>
#include <kiln/io/safetensors.hpp>  // FileError, read_file_bytes, write_file_atomic
#include <kiln/io/tensorboard.hpp>

#include <charconv>
#include <cerrno>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <unistd.h>

namespace kiln::metrics {

// Which way a metric improves.
enum class Better { lower, higher };

// When a metric counts as drifting. An evaluation is "bad" when the value is worse than the best
// value seen before it by more than `margin` (strictly), where the margin is absolute, or, when
// `relative`, the fraction margin * |best|; a NaN value is always bad. The metric drifts from the
// `patience`-th bad evaluation in a row until the next evaluation that is not bad. patience 0
// turns drift detection off for the metric (its best value is still tracked).
struct DriftRule {
  double margin = 0.0;
  bool relative = false;
  int patience = 0;
};

// A metric the logger accepts: its name (also its CSV column and TensorBoard tag), its direction,
// and its drift rule.
struct MetricSpec {
  std::string name = {};
  Better better = Better::lower;
  DriftRule drift = {};
};

// A drifting metric: the evaluation that raised the alert (or, in alerts(), the latest one), the
// best value before it and where it was seen, and how many bad evaluations came in a row.
struct DriftAlert {
  std::string metric = {};
  std::int64_t step = 0;
  double value = 0.0;
  double best = 0.0;
  std::int64_t best_step = 0;
  int consecutive = 0;
};

struct MetricsLoggerOptions {
  std::filesystem::path jsonl = {};  // a JSON-lines file (empty: none)
  std::filesystem::path csv = {};    // a CSV file (empty: none)
  // Each logged value is also added as a scalar, tag tensorboard_prefix + name, and the writer is
  // flushed after each evaluation. Not owned: it must outlive the logger.
  io::TensorBoardWriter* tensorboard = nullptr;
  std::string tensorboard_prefix = {};
  // When resuming from a checkpoint taken at this step, the rows of existing files with a larger
  // step (logged after the checkpoint by the run that stopped) are removed before appending.
  std::optional<std::int64_t> resume_from_step = {};
  std::function<void(const DriftAlert&)> on_drift = {};     // a metric starts drifting
  std::function<void(const DriftAlert&)> on_recovery = {};  // a drifting metric is no longer bad
};

// Logs evaluations of a fixed set of metrics, declared at construction:
//
//   kiln::metrics::MetricsLogger log({{"loss", kiln::metrics::Better::lower, {0.05, false, 3}},
//                                     {"accuracy", kiln::metrics::Better::higher}},
//                                    {.jsonl = "out/eval.jsonl", .csv = "out/eval.csv"});
//   log.log(step, {{"loss", loss}, {"accuracy", acc}});
//   if (log.drifting("loss")) ...
//
// Files. Each evaluation appends one line to each file, written with one write(2) call:
//   JSONL: {"step":100,"loss":0.25,"accuracy":0.5}  (the values given, in declared order; NaN and
//          infinities, which JSON cannot hold, are written as null)
//   CSV:   a header "step,loss,accuracy" once, then 100,0.25,0.5 (every declared column; an empty
//          cell for a metric not given; nan, inf, -inf as text)
// Numbers are written with the shortest digits that read back as the same double. The CSV
// columns are fixed: a name not declared at construction is an error naming it, rather than a
// new column. Names must be non-empty, unique, not "step", and free of ',', '"' and line breaks.
//
// Restart. Existing files are appended to: the CSV header is checked against the declared columns
// (a mismatch is an error naming the file and both headers) and not written again; a last line
// without its newline (a write cut short) is removed; with resume_from_step, rows past that step
// are removed. The rows kept are replayed (from the JSONL file when there is one, else the CSV)
// to restore each metric's best value and drift state, without calling the callbacks.
//
// Errors: ValueError for bad declarations and unknown or repeated names; io::FileError naming the
// file when one cannot be read or written; io::JsonError for a JSONL line that is not JSON.
class MetricsLogger {
 public:
  explicit MetricsLogger(std::vector<MetricSpec> metrics, MetricsLoggerOptions options = {})
      : metrics_(std::move(metrics)), options_(std::move(options)), trackers_(metrics_.size()) {
    if (metrics_.empty()) fail("constructor", "declare at least one metric");
    for (std::size_t i = 0; i < metrics_.size(); ++i) {
      const MetricSpec& m = metrics_[i];
      if (m.name.empty()) fail("constructor", "metric " + std::to_string(i) + " has an empty name");
      if (m.name == "step") fail("constructor", "\"step\" is the step column, not a metric name");
      if (m.name.find_first_of(",\"\r\n") != std::string::npos)
        fail("constructor", "metric name '" + m.name + "' holds a comma, a quote or a line break");
      for (std::size_t j = 0; j < i; ++j)
        if (metrics_[j].name == m.name) fail("constructor", "metric '" + m.name + "' is declared twice");
      if (!(m.drift.margin >= 0.0) || !std::isfinite(m.drift.margin))
        fail("constructor", "metric '" + m.name + "': the drift margin must be finite and >= 0, got " +
                                std::to_string(m.drift.margin));
      if (m.drift.patience < 0)
        fail("constructor", "metric '" + m.name + "': the drift patience must be >= 0, got " +
                                std::to_string(m.drift.patience));
    }
    std::vector<std::string> jsonl_rows, csv_rows;
    if (!options_.jsonl.empty()) jsonl_rows = prepare_file(options_.jsonl, false);
    if (!options_.csv.empty()) csv_rows = prepare_file(options_.csv, true);
    if (!options_.jsonl.empty()) {
      for (std::size_t i = 0; i < jsonl_rows.size(); ++i) replay_jsonl(jsonl_rows[i], i);
    } else {
      for (std::size_t i = 0; i < csv_rows.size(); ++i) replay_csv(csv_rows[i], i);
    }
    if (!options_.jsonl.empty()) jsonl_file_ = open_append(options_.jsonl);
    if (!options_.csv.empty()) {
      csv_file_ = open_append(options_.csv);
      if (csv_rows.empty() && std::filesystem::file_size(options_.csv) == 0)
        append(csv_file_.value, options_.csv, csv_header() + "\n");
    }
  }

  MetricsLogger(const MetricsLogger&) = delete;
  MetricsLogger& operator=(const MetricsLogger&) = delete;

  // Logs one evaluation: writes it to the files and TensorBoard, then updates the best values and
  // drift states, then calls on_drift / on_recovery for the metrics whose state changed.
  void log(std::int64_t step, const std::vector<std::pair<std::string, double>>& values) {
    if (values.empty()) fail("log", "no values given for step " + std::to_string(step));
    std::vector<std::optional<double>> row(metrics_.size());
    for (const auto& [name, value] : values) {
      const std::size_t i = index_of("log", name);
      if (row[i]) fail("log", "metric '" + name + "' is given twice for step " + std::to_string(step));
      row[i] = value;
    }
    if (jsonl_file_.value >= 0) append(jsonl_file_.value, options_.jsonl, jsonl_line(step, row));
    if (csv_file_.value >= 0) append(csv_file_.value, options_.csv, csv_line(step, row));
    if (options_.tensorboard) {
      for (std::size_t i = 0; i < row.size(); ++i)
        if (row[i]) options_.tensorboard->add_scalar(options_.tensorboard_prefix + metrics_[i].name, *row[i], step);
      options_.tensorboard->flush();
    }
    std::vector<std::pair<bool, DriftAlert>> changes;  // (started, alert)
    for (std::size_t i = 0; i < row.size(); ++i)
      if (row[i]) {
        const Change change = update(i, step, *row[i]);
        if (change != Change::none) changes.emplace_back(change == Change::started, alert_of(i));
      }
    ++evaluations_;
    for (const auto& [started, alert] : changes) {
      if (started && options_.on_drift) options_.on_drift(alert);
      if (!started && options_.on_recovery) options_.on_recovery(alert);
    }
  }

  // Whether `name` is drifting now. Throws ValueError for a name not declared.
  bool drifting(std::string_view name) const { return trackers_[index_of("drifting", name)].drifting; }

  // The metrics drifting now, in declared order, each with its latest evaluation.
  std::vector<DriftAlert> alerts() const {
    std::vector<DriftAlert> out;
    for (std::size_t i = 0; i < metrics_.size(); ++i)
      if (trackers_[i].drifting) out.push_back(alert_of(i));
    return out;
  }

  // The best value of `name` so far and its step (nullopt before its first non-NaN value).
  std::optional<double> best(std::string_view name) const {
    const Tracker& t = trackers_[index_of("best", name)];
    return t.has_best ? std::optional<double>(t.best) : std::nullopt;
  }
  std::optional<std::int64_t> best_step(std::string_view name) const {
    const Tracker& t = trackers_[index_of("best_step", name)];
    return t.has_best ? std::optional<std::int64_t>(t.best_step) : std::nullopt;
  }

  // Evaluations logged, counting those replayed from existing files.
  std::int64_t evaluations() const { return evaluations_; }
  const std::vector<MetricSpec>& metrics() const { return metrics_; }

  // Makes what was logged durable (fsync of each file).
  void sync() {
    if (jsonl_file_.value >= 0 && ::fsync(jsonl_file_.value) != 0)
      io::detail::throw_file_error("MetricsLogger::sync", "cannot fsync", options_.jsonl.string(), errno);
    if (csv_file_.value >= 0 && ::fsync(csv_file_.value) != 0)
      io::detail::throw_file_error("MetricsLogger::sync", "cannot fsync", options_.csv.string(), errno);
  }

 private:
  struct Tracker {
    bool has_best = false;
    double best = 0.0;
    std::int64_t best_step = 0;
    int consecutive_bad = 0;
    bool drifting = false;
    std::int64_t last_step = 0;
    double last_value = 0.0;
  };
  enum class Change { none, started, recovered };

  // A file descriptor closed with its owner (also when a constructor throws half-way).
  struct FileDescriptor {
    int value = -1;
    FileDescriptor() = default;
    FileDescriptor(const FileDescriptor&) = delete;
    FileDescriptor& operator=(const FileDescriptor&) = delete;
    FileDescriptor& operator=(int fd) {
      value = fd;
      return *this;
    }
    ~FileDescriptor() {
      if (value >= 0) ::close(value);
    }
  };

  [[noreturn]] static void fail(const char* where, const std::string& what) {
    throw ValueError(std::string("kiln::metrics::MetricsLogger::") + where + ": " + what);
  }

  std::size_t index_of(const char* where, std::string_view name) const {
    for (std::size_t i = 0; i < metrics_.size(); ++i)
      if (metrics_[i].name == name) return i;
    std::string declared;
    for (const MetricSpec& m : metrics_) declared += (declared.empty() ? "" : ", ") + m.name;
    fail(where, "unknown metric '" + std::string(name) + "' (declared: " + declared + ")");
  }

  // The drift rule of DriftRule's comment, one evaluation at a time.
  Change update(std::size_t i, std::int64_t step, double value) {
    const MetricSpec& spec = metrics_[i];
    Tracker& t = trackers_[i];
    t.last_step = step;
    t.last_value = value;
    bool bad = false;
    if (std::isnan(value)) {
      bad = true;
    } else if (!t.has_best || (spec.better == Better::lower ? value < t.best : value > t.best)) {
      t.has_best = true;
      t.best = value;
      t.best_step = step;
    } else {
      const double worse_by = spec.better == Better::lower ? value - t.best : t.best - value;
      const double allowed = spec.drift.relative ? spec.drift.margin * std::fabs(t.best) : spec.drift.margin;
      bad = worse_by > allowed;
    }
    if (spec.drift.patience == 0) return Change::none;
    if (bad) {
      ++t.consecutive_bad;
      if (!t.drifting && t.consecutive_bad >= spec.drift.patience) {
        t.drifting = true;
        return Change::started;
      }
      return Change::none;
    }
    t.consecutive_bad = 0;
    if (t.drifting) {
      t.drifting = false;
      return Change::recovered;
    }
    return Change::none;
  }

  DriftAlert alert_of(std::size_t i) const {
    const Tracker& t = trackers_[i];
    return DriftAlert{metrics_[i].name, t.last_step, t.last_value, t.best, t.best_step, t.consecutive_bad};
  }

  // --- file formats ---

  std::string csv_header() const {
    std::string out = "step";
    for (const MetricSpec& m : metrics_) out += "," + m.name;
    return out;
  }

  static std::string csv_number(double value) {
    if (std::isnan(value)) return "nan";
    char buf[64];
    const auto r = std::to_chars(buf, buf + sizeof buf, value);
    return std::string(buf, r.ptr);
  }

  std::string csv_line(std::int64_t step, const std::vector<std::optional<double>>& row) const {
    std::string out = std::to_string(step);
    for (const auto& v : row) {
      out += ',';
      if (v) out += csv_number(*v);
    }
    return out + "\n";
  }

  std::string jsonl_line(std::int64_t step, const std::vector<std::optional<double>>& row) const {
    io::Json object = io::Json::object();
    object.set("step", step);
    for (std::size_t i = 0; i < row.size(); ++i)
      if (row[i]) object.set(metrics_[i].name, std::isfinite(*row[i]) ? io::Json(*row[i]) : io::Json(nullptr));
    return io::to_json(object) + "\n";
  }

  // Reads an existing file for resuming: drops a last line cut short, checks the CSV header, drops
  // rows past resume_from_step (rewriting the file atomically when anything was dropped) and
  // returns the data rows kept.
  std::vector<std::string> prepare_file(const std::filesystem::path& path, bool csv) const {
    std::error_code ec;
    if (!std::filesystem::exists(path, ec)) return {};
    const std::string text = io::read_file_bytes(path.string());
    std::vector<std::string> lines;
    std::size_t start = 0;
    bool changed = false;
    while (start < text.size()) {
      const std::size_t newline = text.find('\n', start);
      if (newline == std::string::npos) {  // a line whose write was cut short
        changed = true;
        break;
      }
      lines.push_back(text.substr(start, newline - start));
      start = newline + 1;
    }
    std::string header;
    if (csv && !lines.empty()) {
      header = lines.front();
      lines.erase(lines.begin());
      if (header != csv_header())
        throw ValueError("kiln::metrics::MetricsLogger: the CSV file '" + path.string() + "' has the header '" +
                         header + "' but this logger's columns are '" + csv_header() + "'");
    }
    if (options_.resume_from_step) {
      std::vector<std::string> kept;
      for (std::size_t i = 0; i < lines.size(); ++i) {
        const std::int64_t step = csv ? csv_step(lines[i], path, i) : jsonl_step(lines[i], path, i);
        if (step <= *options_.resume_from_step) kept.push_back(lines[i]);
      }
      changed = changed || kept.size() != lines.size();
      lines = std::move(kept);
    }
    if (changed) {
      std::string out;
      if (!header.empty()) out += header + "\n";
      for (const std::string& line : lines) out += line + "\n";
      io::write_file_atomic(path.string(), out);
    }
    return lines;
  }

  static std::string row_name(const std::filesystem::path& path, std::size_t row) {
    return "'" + path.string() + "' data row " + std::to_string(row + 1);
  }

  static std::int64_t csv_step(const std::string& line, const std::filesystem::path& path, std::size_t row) {
    const std::size_t comma = line.find(',');
    const std::string_view field(line.data(), comma == std::string::npos ? line.size() : comma);
    std::int64_t step = 0;
    const auto r = std::from_chars(field.data(), field.data() + field.size(), step);
    if (r.ec != std::errc() || r.ptr != field.data() + field.size())
      throw ValueError("kiln::metrics::MetricsLogger: " + row_name(path, row) + ": the step '" +
                       std::string(field) + "' is not an integer");
    return step;
  }

  static std::int64_t jsonl_step(const std::string& line, const std::filesystem::path& path, std::size_t row) {
    return io::parse_json(line, row_name(path, row)).at("step").as_int64();
  }

  void replay_jsonl(const std::string& line, std::size_t row) {
    const io::Json object = io::parse_json(line, row_name(options_.jsonl, row));
    const std::int64_t step = object.at("step").as_int64();
    for (const auto& [name, value] : object.as_object()) {
      if (name == "step") continue;
      for (std::size_t i = 0; i < metrics_.size(); ++i)  // names no longer declared are skipped
        if (metrics_[i].name == name)
          update(i, step, value.is_null() ? std::numeric_limits<double>::quiet_NaN() : value.as_double());
    }
    ++evaluations_;
  }

  void replay_csv(const std::string& line, std::size_t row) {
    const std::int64_t step = csv_step(line, options_.csv, row);
    std::size_t at = line.find(',');
    for (std::size_t i = 0; i < metrics_.size(); ++i) {
      if (at == std::string::npos)
        throw ValueError("kiln::metrics::MetricsLogger: " + row_name(options_.csv, row) + " has " +
                         std::to_string(i + 1) + " cells, expected " + std::to_string(metrics_.size() + 1));
      const std::size_t begin = at + 1;
      at = line.find(',', begin);
      const std::string_view cell(line.data() + begin, (at == std::string::npos ? line.size() : at) - begin);
      if (cell.empty()) continue;
      double value = 0.0;
      const auto r = std::from_chars(cell.data(), cell.data() + cell.size(), value);
      if (r.ec != std::errc() || r.ptr != cell.data() + cell.size())
        throw ValueError("kiln::metrics::MetricsLogger: " + row_name(options_.csv, row) + ": '" + std::string(cell) +
                         "' in column '" + metrics_[i].name + "' is not a number");
      update(i, step, value);
    }
    if (at != std::string::npos)
      throw ValueError("kiln::metrics::MetricsLogger: " + row_name(options_.csv, row) + " has more than " +
                       std::to_string(metrics_.size() + 1) + " cells");
    ++evaluations_;
  }

  static int open_append(const std::filesystem::path& path) {
    const int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) io::detail::throw_file_error("MetricsLogger", "cannot open for appending", path.string(), errno);
    return fd;
  }

  static void append(int fd, const std::filesystem::path& path, const std::string& bytes) {
    std::size_t done = 0;
    while (done < bytes.size()) {
      const ::ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
      if (n < 0) {
        if (errno == EINTR) continue;
        io::detail::throw_file_error("MetricsLogger::log", "cannot append to", path.string(), errno);
      }
      done += static_cast<std::size_t>(n);
    }
  }

  std::vector<MetricSpec> metrics_;
  MetricsLoggerOptions options_;
  std::vector<Tracker> trackers_;
  std::int64_t evaluations_ = 0;
  FileDescriptor jsonl_file_;
  FileDescriptor csv_file_;
};

}  // namespace kiln::metrics
