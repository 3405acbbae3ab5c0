// safetensors files read in place (mmap), sharded checkpoints through model.safetensors.index.json,
// and a small writer for outputs (logits, hook tensors).
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace outro {

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // points into the mapped file
  size_t nbytes = 0;
  std::string file;  // where it came from, for messages

  int64_t numel() const;
  std::string shape_str() const;
};

std::string shape_to_string(const std::vector<int64_t>& s);

// Parses a safetensors header (the JSON after the 8-byte length) against a data section of
// data_len bytes. Validates dtypes, shapes, byte counts, bounds and overlaps; throws Error naming
// `file` and the tensor. Data pointers are base + offset. Exposed for the fuzz target.
std::vector<TensorInfo> parse_safetensors_header(const char* json, size_t json_len,
                                                 const uint8_t* base, size_t data_len,
                                                 const std::string& file);

// Parses a whole safetensors image held in memory (length prefix, header, data).
std::vector<TensorInfo> parse_safetensors(const uint8_t* bytes, size_t len, const std::string& file);

class MappedFile {
 public:
  explicit MappedFile(const std::string& path);  // throws Error when missing/unreadable
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// Tensors of a checkpoint that a WeightStore set aside by name prefix (e.g. "talker."): counted
// from the safetensors headers, their data never read.
struct LeftOut {
  std::string prefix;
  size_t tensors = 0;
  uint64_t bytes = 0;
};

// All tensors of a checkpoint folder (one file or shards), by their checkpoint names.
class WeightStore {
 public:
  // Opens DIR/model.safetensors, or DIR/model.safetensors.index.json and its shards,
  // or a single .safetensors file path. Tensors whose names start with one of `leave_out` are
  // counted (left_out()) but not kept: find() does not see them, and a shard holding nothing else
  // is unmapped again after its header is read.
  static std::unique_ptr<WeightStore> open(const std::string& path, const std::vector<std::string>& leave_out = {});

  const TensorInfo* find(const std::string& name) const;
  // Throws "missing tensor NAME in DIR" when absent.
  const TensorInfo& get(const std::string& name) const;
  // Also checks the shape: "tensor NAME in FILE: expected shape [a, b], found [c, d]".
  const TensorInfo& get(const std::string& name, const std::vector<int64_t>& shape) const;
  bool has(const std::string& name) const { return find(name) != nullptr; }
  const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }
  const std::string& where() const { return where_; }
  // One entry per leave_out prefix, in the order given (zero counts when none matched).
  const std::vector<LeftOut>& left_out() const { return left_out_; }
  uint64_t kept_bytes() const;    // data bytes of the tensors kept
  size_t mapped_files() const { return files_.size(); }  // files still mapped
  size_t shard_count() const { return shards_; }         // files whose headers were read

 private:
  std::string where_;
  std::vector<std::unique_ptr<MappedFile>> files_;
  std::map<std::string, TensorInfo> tensors_;
  std::vector<LeftOut> left_out_;
  size_t shards_ = 0;
};

// A tensor to write: raw bytes in the given dtype.
struct TensorOut {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};
TensorOut tensor_f32(const std::string& name, std::vector<int64_t> shape, const float* data);
TensorOut tensor_i64(const std::string& name, const std::vector<int64_t>& values);

void write_safetensors(const std::string& path, const std::vector<TensorOut>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// Reads a tensor as float32 (any float or integer dtype), checking its element count.
std::vector<float> read_f32(const TensorInfo& t);
std::vector<int64_t> read_i64(const TensorInfo& t);

}  // namespace outro
