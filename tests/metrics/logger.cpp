// Tests of include/kiln/metrics/logger.hpp: the exact bytes of the JSONL and CSV files, resuming
// after a restart (no second header, a torn last line removed, rows past the checkpoint removed,
// best values and drift state restored), drift flagged at exactly the N-th consecutive bad
// evaluation and cleared on recovery in hand-traced sequences, the TensorBoard mirror read back by
// tests/reference/tensorboard_check.py, and the errors.
#include <doctest/doctest.h>
#include <kiln/io/json.hpp>
#include <kiln/io/tensorboard.hpp>
#include <kiln/metrics/logger.hpp>
#include "../support/torch_reference.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <string>
#include <vector>

#include <unistd.h>

namespace {

namespace fs = std::filesystem;
using kiln::metrics::Better;
using kiln::metrics::DriftAlert;
using kiln::metrics::MetricsLogger;
using kiln::metrics::MetricSpec;

struct TemporaryDirectory {
  fs::path path;
  explicit TemporaryDirectory(const std::string& stem) {
    static int counter = 0;
    path = fs::temp_directory_path() / (stem + "_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TemporaryDirectory() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

std::string read_all(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void write_all(const fs::path& p, const std::string& text) { std::ofstream(p, std::ios::binary) << text; }

const double not_a_number = std::numeric_limits<double>::quiet_NaN();
const double inf = std::numeric_limits<double>::infinity();

}  // namespace

TEST_CASE("MetricsLogger writes JSONL and CSV files byte for byte") {
  TemporaryDirectory dir("kiln_logger_files");
  {
    MetricsLogger log({{"loss", Better::lower}, {"acc", Better::higher}},
                      {.jsonl = dir.path / "eval.jsonl", .csv = dir.path / "eval.csv"});
    log.log(1, {{"loss", 0.5}, {"acc", 0.25}});
    log.log(2, {{"acc", 0.75}, {"loss", 1e-7}});  // any order in; declared order out
    log.log(3, {{"loss", 3.0}});                  // acc not given: empty cell, absent key
    log.log(-4, {{"loss", not_a_number}, {"acc", -inf}});  // JSON has no NaN or infinity: null
    log.log(5, {{"acc", 0.1}, {"loss", 123456789.125}});
    CHECK(log.evaluations() == 5);
  }
  CHECK(read_all(dir.path / "eval.csv") ==
        "step,loss,acc\n"
        "1,0.5,0.25\n"
        "2,1e-07,0.75\n"
        "3,3,\n"
        "-4,nan,-inf\n"
        "5,123456789.125,0.1\n");
  CHECK(read_all(dir.path / "eval.jsonl") ==
        "{\"step\":1,\"loss\":0.5,\"acc\":0.25}\n"
        "{\"step\":2,\"loss\":1e-07,\"acc\":0.75}\n"
        "{\"step\":3,\"loss\":3.0}\n"
        "{\"step\":-4,\"loss\":null,\"acc\":null}\n"
        "{\"step\":5,\"loss\":123456789.125,\"acc\":0.1}\n");

  // only one of the files
  MetricsLogger csv_only({{"x", Better::lower}}, {.csv = dir.path / "only.csv"});
  csv_only.log(7, {{"x", 2.5}});
  CHECK(read_all(dir.path / "only.csv") == "step,x\n7,2.5\n");
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir.path)) names.push_back(entry.path().filename().string());
  std::sort(names.begin(), names.end());
  CHECK(names == std::vector<std::string>{"eval.csv", "eval.jsonl", "only.csv"});
}

TEST_CASE("MetricsLogger resumes: appends without a second header, restores best values") {
  TemporaryDirectory dir("kiln_logger_resume");
  const kiln::metrics::MetricsLoggerOptions files{.jsonl = dir.path / "e.jsonl", .csv = dir.path / "e.csv"};
  const std::vector<MetricSpec> specs = {{"loss", Better::lower}, {"acc", Better::higher}};
  {
    MetricsLogger log(specs, files);
    log.log(10, {{"loss", 0.9}, {"acc", 0.5}});
    log.log(20, {{"loss", 0.4}, {"acc", 0.75}});
    log.log(30, {{"loss", 0.6}, {"acc", 0.625}});
  }
  {
    MetricsLogger log(specs, files);
    CHECK(log.evaluations() == 3);
    CHECK(log.best("loss") == 0.4);
    CHECK(log.best_step("loss") == 20);
    CHECK(log.best("acc") == 0.75);
    log.log(40, {{"loss", 0.3}});
    CHECK(log.best_step("loss") == 40);
  }
  CHECK(read_all(files.csv) == "step,loss,acc\n10,0.9,0.5\n20,0.4,0.75\n30,0.6,0.625\n40,0.3,\n");
  CHECK(read_all(files.jsonl) ==
        "{\"step\":10,\"loss\":0.9,\"acc\":0.5}\n{\"step\":20,\"loss\":0.4,\"acc\":0.75}\n"
        "{\"step\":30,\"loss\":0.6,\"acc\":0.625}\n{\"step\":40,\"loss\":0.3}\n");

  // A crash cut the last lines short: they are removed before appending.
  write_all(files.csv, read_all(files.csv) + "50,0.2");
  write_all(files.jsonl, read_all(files.jsonl) + "{\"step\":50,\"lo");
  {
    MetricsLogger log(specs, files);
    CHECK(log.evaluations() == 4);
    log.log(50, {{"loss", 0.25}, {"acc", 0.5}});
  }
  CHECK(read_all(files.csv) == "step,loss,acc\n10,0.9,0.5\n20,0.4,0.75\n30,0.6,0.625\n40,0.3,\n50,0.25,0.5\n");
  CHECK(read_all(files.jsonl) ==
        "{\"step\":10,\"loss\":0.9,\"acc\":0.5}\n{\"step\":20,\"loss\":0.4,\"acc\":0.75}\n"
        "{\"step\":30,\"loss\":0.6,\"acc\":0.625}\n{\"step\":40,\"loss\":0.3}\n"
        "{\"step\":50,\"loss\":0.25,\"acc\":0.5}\n");

  // Resuming from a checkpoint at step 20: rows 30, 40, 50 go; bests come from rows 10, 20.
  {
    auto options = files;
    options.resume_from_step = 20;
    MetricsLogger log(specs, options);
    CHECK(log.evaluations() == 2);
    CHECK(log.best("loss") == 0.4);
    CHECK(log.best_step("loss") == 20);
    log.log(30, {{"loss", 0.45}, {"acc", 0.8}});
  }
  CHECK(read_all(files.csv) == "step,loss,acc\n10,0.9,0.5\n20,0.4,0.75\n30,0.45,0.8\n");
  CHECK(read_all(files.jsonl) ==
        "{\"step\":10,\"loss\":0.9,\"acc\":0.5}\n{\"step\":20,\"loss\":0.4,\"acc\":0.75}\n"
        "{\"step\":30,\"loss\":0.45,\"acc\":0.8}\n");

  // From the CSV alone (no JSONL file configured) the same state is restored.
  {
    MetricsLogger log(specs, {.csv = files.csv});
    CHECK(log.evaluations() == 3);
    CHECK(log.best("acc") == 0.8);
    CHECK(log.best_step("acc") == 30);
  }

  // Another column set on an existing CSV file: an error naming the file and both headers.
  const std::string mismatch =
      "'" + files.csv.string() + "' has the header 'step,loss,acc' but this logger's columns are 'step,loss'";
  CHECK_THROWS_WITH_AS(MetricsLogger({{"loss", Better::lower}}, {.csv = files.csv}),
                       doctest::Contains(mismatch.c_str()), kiln::ValueError);
}

TEST_CASE("drift: flagged at exactly the N-th consecutive bad evaluation, cleared on recovery") {
  std::vector<std::pair<bool, DriftAlert>> events;  // (started, alert)
  kiln::metrics::MetricsLoggerOptions options;
  options.on_drift = [&](const DriftAlert& a) { events.emplace_back(true, a); };
  options.on_recovery = [&](const DriftAlert& a) { events.emplace_back(false, a); };
  MetricsLogger log({{"loss", Better::lower, {0.1, false, 3}},     // absolute margin 0.1, 3 in a row
                     {"acc", Better::higher, {0.1, true, 2}},      // 10% of the best, 2 in a row
                     {"off", Better::lower, {0.0, false, 0}}},     // patience 0: never drifts
                    options);
  // step: loss (best before; worse by; bad?; run)         acc (best before; allowed; bad?; run)
  //  1: 1.00 (new best)                                    0.50 (new best)
  //  2: 0.80 (new best)                                    0.60 (new best)
  //  3: 0.85 (0.80; 0.05; no; 0)                           0.55 (0.60; 0.06; 0.05 no; 0)
  //  4: 0.95 (0.80; 0.15; yes; 1)                          0.50 (0.60; 0.06; 0.10 yes; 1)
  //  5: 1.00 (0.80; 0.20; yes; 2)                          NaN  (always bad; 2) -> acc drifts
  //  6: 0.92 (0.80; 0.12; yes; 3) -> loss drifts           not given: no change
  //  7: 1.20 (yes; 4), still drifting, no second alert     0.58 (0.60; 0.06; 0.02 no) -> acc recovers
  //  8: 0.88 (0.80; 0.08; no) -> loss recovers
  //  9: 0.99 (yes; 1)
  // 10: 0.70 (new best; 0)
  const double loss[] = {1.0, 0.8, 0.85, 0.95, 1.0, 0.92, 1.2, 0.88, 0.99, 0.7};
  const double acc[] = {0.5, 0.6, 0.55, 0.5, not_a_number, -1, 0.58, -1, -1, -1};  // -1: not given
  const bool loss_drifting[] = {false, false, false, false, false, true, true, false, false, false};
  const bool acc_drifting[] = {false, false, false, false, true, true, false, false, false, false};
  const std::size_t events_after[] = {0, 0, 0, 0, 1, 2, 3, 4, 4, 4};
  for (int i = 0; i < 10; ++i) {
    CAPTURE(i + 1);
    std::vector<std::pair<std::string, double>> values = {{"loss", loss[i]}, {"off", 100.0 * (i + 1)}};
    if (acc[i] != -1) values.emplace_back("acc", acc[i]);
    log.log(i + 1, values);
    CHECK(log.drifting("loss") == loss_drifting[i]);
    CHECK(log.drifting("acc") == acc_drifting[i]);
    CHECK_FALSE(log.drifting("off"));
    CHECK(events.size() == events_after[i]);
    if (i + 1 == 6) {
      const auto alerts = log.alerts();  // declared order: loss, acc
      REQUIRE(alerts.size() == 2);
      CHECK(alerts[0].metric == "loss");
      CHECK(alerts[1].metric == "acc");
      CHECK(alerts[1].step == 5);  // acc's latest evaluation
      CHECK(std::isnan(alerts[1].value));
    }
    if (i + 1 == 7) {
      const auto alerts = log.alerts();
      REQUIRE(alerts.size() == 1);
      CHECK(alerts[0].step == 7);
      CHECK(alerts[0].value == 1.2);
      CHECK(alerts[0].consecutive == 4);
    }
  }
  REQUIRE(events.size() == 4);
  CHECK(events[0].first);
  CHECK(events[0].second.metric == "acc");
  CHECK(events[0].second.step == 5);
  CHECK(events[0].second.best == 0.6);
  CHECK(events[0].second.best_step == 2);
  CHECK(events[0].second.consecutive == 2);
  CHECK(events[1].first);
  CHECK(events[1].second.metric == "loss");
  CHECK(events[1].second.step == 6);
  CHECK(events[1].second.value == 0.92);
  CHECK(events[1].second.best == 0.8);
  CHECK(events[1].second.best_step == 2);
  CHECK(events[1].second.consecutive == 3);
  CHECK_FALSE(events[2].first);
  CHECK(events[2].second.metric == "acc");
  CHECK(events[2].second.step == 7);
  CHECK(events[2].second.consecutive == 0);
  CHECK_FALSE(events[3].first);
  CHECK(events[3].second.metric == "loss");
  CHECK(events[3].second.step == 8);
  CHECK(log.alerts().empty());
  CHECK(log.best("loss") == 0.7);
  CHECK(log.best_step("loss") == 10);
  CHECK(log.best("off") == 100.0);
}

TEST_CASE("drift: patience 1, a relative margin around a negative best, state carried across a restart") {
  TemporaryDirectory dir("kiln_logger_drift");
  // higher is better, best -2.0, relative margin 0.25: allowed 0.5 below, so -2.4 is fine, -2.6 bad
  MetricsLogger one({{"elbo", Better::higher, {0.25, true, 1}}});
  one.log(1, {{"elbo", -2.0}});
  one.log(2, {{"elbo", -2.4}});
  CHECK_FALSE(one.drifting("elbo"));
  one.log(3, {{"elbo", -2.6}});
  CHECK(one.drifting("elbo"));  // the first bad evaluation with patience 1
  one.log(4, {{"elbo", -1.0}});
  CHECK_FALSE(one.drifting("elbo"));
  CHECK(one.best("elbo") == -1.0);

  // two bad evaluations before a restart, the third after it raises the alert
  const std::vector<MetricSpec> specs = {{"loss", Better::lower, {0.0, false, 3}}};
  const kiln::metrics::MetricsLoggerOptions files{.jsonl = dir.path / "d.jsonl"};
  {
    MetricsLogger log(specs, files);
    log.log(1, {{"loss", 1.0}});
    log.log(2, {{"loss", 1.5}});
    log.log(3, {{"loss", 1.25}});
    CHECK_FALSE(log.drifting("loss"));
  }
  int alerts = 0;
  auto options = files;
  options.on_drift = [&](const DriftAlert& a) {
    ++alerts;
    CHECK(a.step == 4);
    CHECK(a.consecutive == 3);
  };
  MetricsLogger log(specs, options);
  CHECK_FALSE(log.drifting("loss"));
  log.log(4, {{"loss", 1.0625}});  // worse than 1.0 by 0.0625 > 0
  CHECK(log.drifting("loss"));
  CHECK(alerts == 1);

  // a logger resumed while drifting is drifting, without calling the callback again
  int replayed_alerts = 0;
  auto options2 = files;
  options2.on_drift = [&](const DriftAlert&) { ++replayed_alerts; };
  MetricsLogger again(specs, options2);
  CHECK(again.drifting("loss"));
  CHECK(replayed_alerts == 0);
}

TEST_CASE("MetricsLogger mirrors each value to TensorBoard") {
  TemporaryDirectory dir("kiln_logger_tensorboard");
  fs::path event_file;
  {
    kiln::io::TensorBoardWriter tb(dir.path / "tb");
    event_file = tb.path();
    MetricsLogger log({{"loss", Better::lower}, {"acc", Better::higher}},
                      {.tensorboard = &tb, .tensorboard_prefix = "eval/"});
    log.log(100, {{"acc", 0.5}, {"loss", 0.25}});
    log.log(200, {{"loss", 0.125}});
    // flushed after each evaluation: the three records are on disk before tb is destroyed (their
    // sizes do not depend on wall_time, a fixed64)
    std::size_t expected = kiln::io::tfrecord_bytes(kiln::io::tensorboard_file_version_event(0)).size();
    expected += kiln::io::tfrecord_bytes(kiln::io::tensorboard_scalar_event(0, 100, "eval/loss", 0)).size();
    expected += kiln::io::tfrecord_bytes(kiln::io::tensorboard_scalar_event(0, 200, "eval/loss", 0)).size();
    expected += kiln::io::tfrecord_bytes(kiln::io::tensorboard_scalar_event(0, 100, "eval/acc", 0)).size();
    CHECK(fs::file_size(event_file) == expected);
  }
  const fs::path json_path = dir.path / "records.json";
  REQUIRE(kiln::test::run_python_script("json, struct, zlib", "python3", "reference/tensorboard_check.py",
                                        kiln::test::shell_quote(event_file.string()) + " " +
                                            kiln::test::shell_quote(json_path.string())) == 0);
  const kiln::io::Json records = kiln::io::parse_json(read_all(json_path), json_path.string());
  REQUIRE(records.size() == 4);  // file_version, then one event per value in declared order
  const char* tags[] = {"eval/loss", "eval/acc", "eval/loss"};
  const double values[] = {0.25, 0.5, 0.125};
  const std::int64_t steps[] = {100, 100, 200};
  for (std::size_t i = 0; i < 3; ++i) {
    CAPTURE(i);
    const kiln::io::Json& r = records.at(i + 1);
    CHECK(r.at("step").as_int64() == steps[i]);
    const kiln::io::Json& v = r.at("values").at(std::size_t(0));
    CHECK(v.at("tag").as_string() == tags[i]);
    CHECK(v.at("simple_value").as_double() == values[i]);
  }
}

TEST_CASE("MetricsLogger rejects bad declarations and unknown names") {
  using kiln::ValueError;
  CHECK_THROWS_WITH_AS(MetricsLogger({}), doctest::Contains("declare at least one metric"), ValueError);
  CHECK_THROWS_WITH_AS(MetricsLogger({{"", Better::lower}}), doctest::Contains("metric 0 has an empty name"), ValueError);
  CHECK_THROWS_WITH_AS(MetricsLogger({{"step", Better::lower}}), doctest::Contains("\"step\" is the step column"),
                       ValueError);
  CHECK_THROWS_WITH_AS(MetricsLogger({{"a,b", Better::lower}}), doctest::Contains("'a,b' holds a comma"), ValueError);
  CHECK_THROWS_WITH_AS(MetricsLogger({{"a", Better::lower}, {"a", Better::higher}}),
                       doctest::Contains("metric 'a' is declared twice"), ValueError);
  CHECK_THROWS_WITH_AS(MetricsLogger({{"a", Better::lower, {-0.5, false, 1}}}),
                       doctest::Contains("drift margin must be finite and >= 0"), ValueError);
  CHECK_THROWS_WITH_AS(MetricsLogger({{"a", Better::lower, {0.5, false, -1}}}),
                       doctest::Contains("drift patience must be >= 0, got -1"), ValueError);

  MetricsLogger log({{"loss", Better::lower}, {"acc", Better::higher}});
  CHECK_THROWS_WITH_AS(log.log(1, {{"loss", 1.0}, {"bleu", 2.0}}),
                       doctest::Contains("unknown metric 'bleu' (declared: loss, acc)"), ValueError);
  CHECK_THROWS_WITH_AS(log.log(1, {{"loss", 1.0}, {"loss", 2.0}}), doctest::Contains("'loss' is given twice for step 1"),
                       ValueError);
  CHECK_THROWS_WITH_AS(log.log(1, {}), doctest::Contains("no values given for step 1"), ValueError);
  CHECK_THROWS_WITH_AS((void)log.drifting("bleu"), doctest::Contains("unknown metric 'bleu'"), ValueError);
  CHECK(log.evaluations() == 0);
  CHECK_FALSE(log.best("loss").has_value());

  TemporaryDirectory dir("kiln_logger_errors");
  write_all(dir.path / "bad.csv", "step,loss\n1,0.5\nx,0.25\n");
  kiln::metrics::MetricsLoggerOptions options;
  options.csv = dir.path / "bad.csv";
  CHECK_THROWS_WITH_AS(MetricsLogger({{"loss", Better::lower}}, options),
                       doctest::Contains("data row 2: the step 'x' is not an integer"), ValueError);
  write_all(dir.path / "bad.csv", "step,loss\n1,0.5,7\n");
  CHECK_THROWS_WITH_AS(MetricsLogger({{"loss", Better::lower}}, options), doctest::Contains("has more than 2 cells"),
                       ValueError);
  options.csv = dir.path / "missing_dir" / "x.csv";
  CHECK_THROWS_WITH_AS(MetricsLogger({{"loss", Better::lower}}, options),
                       doctest::Contains("cannot open for appending"), kiln::io::FileError);
}
