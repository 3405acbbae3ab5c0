#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "core/error.h"

namespace outro {

namespace fs = std::filesystem;
using json = nlohmann::json;

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

std::string shape_to_string(const std::vector<int64_t>& s) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << "]";
  return os.str();
}

std::string TensorInfo::shape_str() const { return shape_to_string(shape); }

std::vector<TensorInfo> parse_safetensors_header(const char* text, size_t text_len,
                                                 const uint8_t* base, size_t data_len,
                                                 const std::string& file) {
  json h;
  try {
    h = json::parse(text, text + text_len);
  } catch (const json::exception& e) {
    fail(file, ": safetensors header is not valid JSON (", e.what(), ")");
  }
  if (!h.is_object()) fail(file, ": safetensors header: expected a JSON object, found ", h.type_name());
  std::vector<TensorInfo> out;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (auto it = h.begin(); it != h.end(); ++it) {
    if (it.key() == "__metadata__") continue;
    const std::string& name = it.key();
    const json& v = it.value();
    if (!v.is_object()) fail(file, ": tensor ", name, ": expected an object with dtype/shape/data_offsets");
    auto dt = v.find("dtype");
    auto sh = v.find("shape");
    auto off = v.find("data_offsets");
    if (dt == v.end() || !dt->is_string()) fail(file, ": tensor ", name, ": field dtype missing or not a string");
    if (sh == v.end() || !sh->is_array()) fail(file, ": tensor ", name, ": field shape missing or not an array");
    if (off == v.end() || !off->is_array() || off->size() != 2)
      fail(file, ": tensor ", name, ": field data_offsets must be an array of 2 integers");
    TensorInfo t;
    t.name = name;
    t.file = file;
    if (!dtype_from_string(dt->get<std::string>(), &t.dtype))
      fail(file, ": tensor ", name, ": unsupported dtype ", dt->get<std::string>(),
           " (expected one of F32, F16, BF16, F64, I64, I32, I16, I8, U8, BOOL)");
    // numel with overflow checks
    uint64_t numel = 1;
    for (const auto& d : *sh) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0)
        fail(file, ": tensor ", name, ": shape entries must be non-negative integers, found ", d.dump());
      uint64_t dv = d.get<uint64_t>();
      if (dv != 0 && numel > std::numeric_limits<uint64_t>::max() / dv / 8)
        fail(file, ": tensor ", name, ": shape ", sh->dump(), " is too large");
      numel *= dv;
      t.shape.push_back(int64_t(dv));
    }
    const json& a = (*off)[0];
    const json& b = (*off)[1];
    if (!a.is_number_integer() || !b.is_number_integer() || a.get<int64_t>() < 0 || b.get<int64_t>() < 0)
      fail(file, ": tensor ", name, ": data_offsets must be non-negative integers, found ", off->dump());
    uint64_t begin = a.get<uint64_t>(), end = b.get<uint64_t>();
    if (end < begin) fail(file, ": tensor ", name, ": data_offsets end ", end, " is before begin ", begin);
    if (end > data_len)
      fail(file, ": tensor ", name, ": data_offsets [", begin, ", ", end, ") run past the data section of ",
           data_len, " bytes (file truncated or header lying)");
    uint64_t expect = numel * dtype_size(t.dtype);
    if (end - begin != expect)
      fail(file, ": tensor ", name, ": shape ", t.shape_str(), " of ", dtype_name(t.dtype), " needs ", expect,
           " bytes, data_offsets give ", end - begin);
    t.data = base + begin;
    t.nbytes = size_t(end - begin);
    ranges.emplace_back(begin, end);
    out.push_back(std::move(t));
  }
  // Overlap check: sort by begin; each must start at or after the previous end (empty ones are free).
  std::vector<size_t> idx(ranges.size());
  for (size_t i = 0; i < idx.size(); ++i) idx[i] = i;
  std::sort(idx.begin(), idx.end(), [&](size_t x, size_t y) { return ranges[x] < ranges[y]; });
  uint64_t prev_end = 0;
  size_t prev = SIZE_MAX;
  for (size_t k : idx) {
    if (ranges[k].first == ranges[k].second) continue;
    if (prev != SIZE_MAX && ranges[k].first < prev_end)
      fail(file, ": tensors ", out[prev].name, " and ", out[k].name, " overlap in the data section");
    prev_end = ranges[k].second;
    prev = k;
  }
  return out;
}

std::vector<TensorInfo> parse_safetensors(const uint8_t* bytes, size_t len, const std::string& file) {
  if (len < 8) fail(file, ": not a safetensors file: ", len, " bytes, expected at least the 8-byte header length");
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; --i) hlen = (hlen << 8) | bytes[i];
  if (hlen > len - 8)
    fail(file, ": safetensors header length ", hlen, " exceeds the file size ", len, " (truncated or not safetensors)");
  if (hlen > (uint64_t(100) << 20)) fail(file, ": safetensors header length ", hlen, " is over the 100 MiB limit");
  return parse_safetensors_header(reinterpret_cast<const char*>(bytes + 8), size_t(hlen), bytes + 8 + hlen,
                                  len - 8 - size_t(hlen), file);
}

MappedFile::MappedFile(const std::string& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) fail(path, ": cannot open: ", std::strerror(errno));
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    ::close(fd);
    fail(path, ": cannot stat: ", std::strerror(errno));
  }
  if (S_ISDIR(st.st_mode)) {
    ::close(fd);
    fail(path, ": is a directory, expected a file");
  }
  size_ = size_t(st.st_size);
  if (size_ > 0) {
    void* p = mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      ::close(fd);
      fail(path, ": mmap failed: ", std::strerror(errno));
    }
    data_ = static_cast<uint8_t*>(p);
  }
  ::close(fd);
}

MappedFile::~MappedFile() {
  if (data_) munmap(data_, size_);
}

std::unique_ptr<WeightStore> WeightStore::open(const std::string& path, const std::vector<std::string>& leave_out) {
  auto ws = std::make_unique<WeightStore>();
  ws->where_ = path;
  for (const auto& p : leave_out) ws->left_out_.push_back({p, 0, 0});
  std::vector<std::string> files;
  // Index checkpoints: which tensors the index places in each shard, to check against the shards.
  std::string index_path;
  std::map<std::string, std::vector<std::string>> listed;
  if (fs::is_directory(path)) {
    fs::path dir(path);
    if (fs::exists(dir / "model.safetensors")) {
      files.push_back((dir / "model.safetensors").string());
    } else if (fs::exists(dir / "model.safetensors.index.json")) {
      std::string ip = (dir / "model.safetensors.index.json").string();
      index_path = ip;
      std::ifstream f(ip);
      if (!f) fail(ip, ": cannot open: ", std::strerror(errno));
      json idx;
      try {
        idx = json::parse(f);
      } catch (const json::exception& e) {
        fail(ip, ": not valid JSON (", e.what(), ")");
      }
      if (!idx.is_object() || !idx.contains("weight_map") || !idx["weight_map"].is_object())
        fail(ip, ": field weight_map missing or not an object");
      for (auto& [k, v] : idx["weight_map"].items()) {
        if (!v.is_string()) fail(ip, ": field weight_map[\"", k, "\"]: expected a shard file name, found ", v.dump());
        std::string shard = v.get<std::string>();
        if (shard.empty() || shard.find('/') != std::string::npos || shard.find("..") != std::string::npos)
          fail(ip, ": field weight_map[\"", k, "\"] names '", shard, "', expected a file name in the same folder");
        auto& names = listed[shard];
        if (names.empty()) files.push_back((dir / shard).string());
        names.push_back(k);
      }
      if (files.empty()) fail(ip, ": field weight_map is empty");
      for (const auto& [shard, names] : listed)
        if (!fs::exists(dir / shard))
          fail(ip, ": field weight_map[\"", names.front(), "\"] names shard ", shard, ", which is missing from ",
               path, " (", names.size(), names.size() == 1 ? " tensor is" : " tensors are", " listed in it)");
    } else {
      fail(path, ": no model.safetensors or model.safetensors.index.json in this folder");
    }
  } else if (fs::exists(path)) {
    files.push_back(path);
  } else {
    fail(path, ": no such file or folder");
  }
  auto left_out_of = [&](const std::string& name) -> LeftOut* {
    for (auto& lo : ws->left_out_)
      if (name.compare(0, lo.prefix.size(), lo.prefix) == 0) return &lo;
    return nullptr;
  };
  std::map<std::string, std::string> left_names;  // left-out tensor -> its file, for duplicate checks
  for (const auto& f : files) {
    if (!fs::exists(f)) fail(f, ": shard is missing");
    auto mf = std::make_unique<MappedFile>(f);
    auto infos = parse_safetensors(mf->data(), mf->size(), f);
    ++ws->shards_;
    size_t kept = 0;
    std::set<std::string> here;
    for (auto& t : infos) {
      std::string n = t.name;
      here.insert(n);
      if (ws->tensors_.count(n)) fail(f, ": tensor ", n, " also appears in ", ws->tensors_[n].file);
      if (LeftOut* lo = left_out_of(n)) {
        if (!left_names.emplace(n, f).second) fail(f, ": tensor ", n, " also appears in ", left_names[n]);
        ++lo->tensors;
        lo->bytes += t.nbytes;
        continue;
      }
      ws->tensors_.emplace(n, std::move(t));
      ++kept;
    }
    if (!index_path.empty()) {
      const std::string shard = fs::path(f).filename().string();
      for (const auto& n : listed[shard])
        if (!here.count(n))
          fail(index_path, ": field weight_map[\"", n, "\"] names shard ", shard, ", but ", f, " has no tensor ", n);
    }
    if (kept) ws->files_.push_back(std::move(mf));  // else unmapped here: only its header was read
  }
  return ws;
}

uint64_t WeightStore::kept_bytes() const {
  uint64_t b = 0;
  for (const auto& [n, t] : tensors_) b += t.nbytes;
  return b;
}

const TensorInfo* WeightStore::find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

const TensorInfo& WeightStore::get(const std::string& name) const {
  const TensorInfo* t = find(name);
  if (!t) {
    for (const auto& lo : left_out_)
      if (name.compare(0, lo.prefix.size(), lo.prefix) == 0)
        fail(where_, ": tensor ", name, " is under ", lo.prefix, ", which outro leaves out (not loaded)");
    fail(where_, ": missing tensor ", name);
  }
  return *t;
}

const TensorInfo& WeightStore::get(const std::string& name, const std::vector<int64_t>& shape) const {
  const TensorInfo& t = get(name);
  if (t.shape != shape)
    fail(t.file, ": tensor ", name, ": expected shape ", shape_to_string(shape), ", found ", t.shape_str());
  return t;
}

TensorOut tensor_f32(const std::string& name, std::vector<int64_t> shape, const float* data) {
  TensorOut t;
  t.name = name;
  t.dtype = DType::F32;
  t.shape = std::move(shape);
  int64_t n = 1;
  for (auto d : t.shape) n *= d;
  t.bytes.resize(size_t(n) * 4);
  if (n) std::memcpy(t.bytes.data(), data, size_t(n) * 4);
  return t;
}

TensorOut tensor_i64(const std::string& name, const std::vector<int64_t>& values) {
  TensorOut t;
  t.name = name;
  t.dtype = DType::I64;
  t.shape = {int64_t(values.size())};
  t.bytes.resize(values.size() * 8);
  if (!values.empty()) std::memcpy(t.bytes.data(), values.data(), values.size() * 8);
  return t;
}

void write_safetensors(const std::string& path, const std::vector<TensorOut>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  json h = json::object();
  if (!metadata.empty()) h["__metadata__"] = metadata;
  uint64_t off = 0;
  for (const auto& t : tensors) {
    h[t.name] = {{"dtype", dtype_name(t.dtype)}, {"shape", t.shape}, {"data_offsets", {off, off + t.bytes.size()}}};
    off += t.bytes.size();
  }
  std::string hs = h.dump();
  while ((hs.size() + 8) % 8) hs.push_back(' ');
  std::ofstream f(path, std::ios::binary);
  if (!f) fail(path, ": cannot open for writing");
  uint64_t n = hs.size();
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = uint8_t(n >> (8 * i));
  f.write(reinterpret_cast<const char*>(len), 8);
  f.write(hs.data(), std::streamsize(hs.size()));
  for (const auto& t : tensors) f.write(reinterpret_cast<const char*>(t.bytes.data()), std::streamsize(t.bytes.size()));
  if (!f) fail(path, ": write failed");
}

std::vector<float> read_f32(const TensorInfo& t) {
  std::vector<float> v(size_t(t.numel()));
  to_f32(t.dtype, t.data, v.data(), v.size());
  return v;
}

std::vector<int64_t> read_i64(const TensorInfo& t) {
  std::vector<int64_t> v(size_t(t.numel()));
  if (t.dtype == DType::I64) {
    if (!v.empty()) std::memcpy(v.data(), t.data, v.size() * 8);
  } else if (t.dtype == DType::I32) {
    for (size_t i = 0; i < v.size(); ++i) { int32_t x; std::memcpy(&x, t.data + 4 * i, 4); v[i] = x; }
  } else {
    fail(t.file, ": tensor ", t.name, ": expected an integer dtype, found ", dtype_name(t.dtype));
  }
  return v;
}

}  // namespace outro
