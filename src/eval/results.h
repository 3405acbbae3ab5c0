// Results of an evaluation run: append-only JSONL files (one per strategy and rank), resuming,
// merging, the summary (accuracy, per task/category, paired statistics), the terminal table and
// the HTML page.
//
// Layout of --out DIR:
//   results/{strategy}.rank{r}.jsonl   one record per (item, seed), appended as produced
//   ranks/done.rank{r}.json            written by rank r when its share is finished
//   merged/{strategy}.jsonl            every record of the strategy, in benchmark order (rank 0)
//   summary.json, report.html          (rank 0)
#pragma once
#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "eval/bench.h"

namespace outro::eval {

struct Record {
  std::string id, strategy;
  int seed = 0;
  std::string response;
  int pred = -1;  // chosen option, -1: unparsed
  std::string method;
  bool correct = false;
  int prompt_tokens = 0, new_tokens = 0;
  double seconds = 0;
  int rank = 0;
};
nlohmann::json record_to_json(const Record& r, const Item& item);
Record record_from_json(const nlohmann::json& j);

using RecordKey = std::tuple<std::string, int, std::string>;  // strategy, seed, id

// Opens --out DIR for rank r: creates the folders, cuts an unfinished last line (a killed
// writer) off this rank's own files, and reads what every rank has already written.
class ResultStore {
 public:
  ResultStore(std::string out_dir, int rank);
  bool done(const std::string& strategy, int seed, const std::string& id) const;
  // Appends one line to results/{strategy}.rank{r}.jsonl with a single write(2) and flushes it.
  void append(const Record& r, const Item& item);
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_;
  int rank_;
  std::set<RecordKey> done_;
};

// Reads every results/*.jsonl under dir (later duplicates of a key are ignored; torn lines skipped).
std::map<RecordKey, Record> read_all_records(const std::string& dir);

struct SummaryConfig {
  std::vector<std::string> strategies;  // the first one named "baseline" (else the first) is the reference
  std::vector<int> seeds;
  int bootstrap_resamples = 10000;
  uint64_t bootstrap_seed = 20260314;
  nlohmann::json meta;  // copied to summary["meta"]
};

// Throws when a (strategy, seed, item) record is missing, naming how many and the first few.
nlohmann::json summarize(const std::vector<Item>& items, const std::map<RecordKey, Record>& recs,
                         const SummaryConfig& cfg);
// merged/{strategy}.jsonl in benchmark order.
void write_merged(const std::string& dir, const std::vector<Item>& items, const std::map<RecordKey, Record>& recs,
                  const SummaryConfig& cfg);
std::string format_table(const nlohmann::json& summary);
std::string render_html(const nlohmann::json& summary);

}  // namespace outro::eval
