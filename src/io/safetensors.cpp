#include "deltamoe/io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>

#include "io/file_util.h"

namespace deltamoe::io {

using detail::quote_name;
using json = nlohmann::json;

namespace {

constexpr const char* kComponent = "safetensors";
// Our schema nests at most three levels (header → entry → shape); anything deeper is not a
// safetensors header, and refusing it early bounds the parser's memory on hostile input.
constexpr int kMaxJsonDepth = 4;

struct DTypeName {
  const char* name;
  DType dtype;
};
constexpr DTypeName kSupported[] = {
    {"F32", DType::f32}, {"BF16", DType::bf16}, {"F16", DType::f16}, {"I32", DType::i32}};
// Valid safetensors dtypes we do not load: named in the error so the user knows the file is
// fine but the type is not handled, rather than "unknown dtype".
constexpr const char* kKnownUnsupported[] = {
    "BOOL", "U8",  "I8",      "I16",     "U16",     "U32", "I64",     "U64",
    "F64",  "C64", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4",  "F6_E2M3", "F6_E3M2"};

uint64_t read_le64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// Reads a JSON integer ≥ 0 (unsigned or non-negative signed); false for anything else,
// including floats such as 2.0, which the format does not allow.
bool as_uint(const json& j, uint64_t& out) {
  if (j.is_number_unsigned()) {
    out = j.get<uint64_t>();
    return true;
  }
  if (j.is_number_integer() && j.get<int64_t>() >= 0) {
    out = static_cast<uint64_t>(j.get<int64_t>());
    return true;
  }
  return false;
}

}  // namespace

struct SafetensorsFile::Mapping {
  void* addr = nullptr;
  size_t size = 0;
  Mapping(void* a, size_t s) : addr(a), size(s) {}
  ~Mapping() {
    if (addr != nullptr) ::munmap(addr, size);
  }
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
};

const char* safetensors_dtype_name(DType dtype) {
  for (const auto& d : kSupported)
    if (d.dtype == dtype) return d.name;
  fail(kComponent, "no safetensors name for dtype ", dtype_name(dtype));
}

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  auto bad = [&](auto&&... args) { fail(kComponent, path, ": ", args...); };

  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) bad("cannot open: ", std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    bad("cannot stat: ", std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    bad("not a regular file");
  }
  const auto file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < 8) {
    ::close(fd);
    bad("file is ", file_size, " bytes, shorter than the 8-byte header length");
  }
  void* addr = ::mmap(nullptr, file_size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_err = errno;
  ::close(fd);  // the mapping keeps the file open by itself
  if (addr == MAP_FAILED) bad("cannot mmap ", file_size, " bytes: ", std::strerror(map_err));
  // Weights read in place at decode stream from this mapping: on 4 KiB pages a read-only
  // scan of it ran at 19 GB/s against 26 GB/s on 2 MiB pages (one core, Zen 4), a TLB walk
  // and a prefetcher restart every 4 KiB. The kernel maps the file on 2 MiB pages when its
  // page-cache folios are that large, which this hint makes them when they are read from
  // disk (docs/llm.md, "Huge pages").
  advise_huge_pages(addr, file_size);

  SafetensorsFile f;
  f.path_ = path;
  f.mapping_ = std::make_shared<const Mapping>(addr, file_size);
  const auto* base = static_cast<const uint8_t*>(addr);

  const uint64_t header_len = read_le64(base);
  if (header_len > file_size - 8)
    bad("header length ", header_len, " exceeds file size ", file_size, " - 8");
  if (header_len > kSafetensorsMaxHeaderBytes)
    bad("header length ", header_len, " exceeds the limit of ", kSafetensorsMaxHeaderBytes,
        " bytes");
  if (header_len < 2) bad("header length ", header_len, " is too short for a JSON object");
  f.data_offset_ = 8 + header_len;
  const uint64_t data_size = file_size - f.data_offset_;

  const json header = detail::parse_json_object_strict(
      std::string_view(reinterpret_cast<const char*>(base + 8), header_len), kMaxJsonDepth,
      "header", [&](const std::string& msg) { bad(msg); });

  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) bad("__metadata__ is a JSON ", v.type_name(), ", not an object");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string())
          bad("__metadata__ ", quote_name(m.key()), " is a JSON ", m.value().type_name(),
              ", not a string");
        f.metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    auto bad_tensor = [&](auto&&... args) { bad("tensor ", quote_name(name), ": ", args...); };
    if (!v.is_object()) bad_tensor("entry is a JSON ", v.type_name(), ", not an object");
    for (auto k = v.begin(); k != v.end(); ++k)
      if (k.key() != "dtype" && k.key() != "shape" && k.key() != "data_offsets")
        bad_tensor("unexpected field ", quote_name(k.key()));
    if (!v.contains("dtype")) bad_tensor("missing dtype");
    if (!v.contains("shape")) bad_tensor("missing shape");
    if (!v.contains("data_offsets")) bad_tensor("missing data_offsets");

    SafetensorsEntry e;
    e.name = name;
    const json& jd = v["dtype"];
    if (!jd.is_string()) bad_tensor("dtype is a JSON ", jd.type_name(), ", not a string");
    const auto& ds = jd.get_ref<const std::string&>();
    bool found = false;
    for (const auto& d : kSupported)
      if (ds == d.name) {
        e.dtype = d.dtype;
        found = true;
      }
    if (!found) {
      for (const char* u : kKnownUnsupported)
        if (ds == u) bad_tensor("dtype ", u, " is not supported (supported: F32, BF16, F16, I32)");
      bad_tensor("unknown dtype ", quote_name(ds));
    }

    const json& js = v["shape"];
    if (!js.is_array()) bad_tensor("shape is a JSON ", js.type_name(), ", not an array");
    uint64_t numel = 1;
    for (const json& d : js) {
      uint64_t extent = 0;
      if (!as_uint(d, extent) || extent > static_cast<uint64_t>(INT64_MAX))
        bad_tensor("shape ", detail::one_line(js.dump()), " must hold non-negative integers");
      if (__builtin_mul_overflow(numel, extent, &numel))
        bad_tensor("shape ", js.dump(), " overflows 64 bits");
      e.shape.push_back(static_cast<int64_t>(extent));
    }
    uint64_t nbytes = 0;
    if (__builtin_mul_overflow(numel, dtype_size(e.dtype), &nbytes) || nbytes > INT64_MAX)
      bad_tensor("shape ", js.dump(), " overflows 64 bits in bytes");

    const json& jo = v["data_offsets"];
    if (!jo.is_array() || jo.size() != 2 || !as_uint(jo[0], e.begin) || !as_uint(jo[1], e.end))
      bad_tensor("data_offsets ", detail::one_line(jo.dump()),
                 " must be [begin, end] of non-negative integers");
    if (e.begin > e.end) bad_tensor("data_offsets [", e.begin, ", ", e.end, "] have begin > end");
    if (e.end > data_size)
      bad_tensor("data_offsets [", e.begin, ", ", e.end, "] exceed data size ", data_size);
    if (e.end - e.begin != nbytes)
      bad_tensor("data_offsets [", e.begin, ", ", e.end, "] hold ", e.end - e.begin, " bytes but ",
                 ds, " ", shape_str(e.shape), " needs ", nbytes);
    f.entries_.push_back(std::move(e));
  }

  std::sort(f.entries_.begin(), f.entries_.end(), [](const auto& a, const auto& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.name < b.name;
  });
  // Sorted by begin, two non-empty tensors overlap iff one starts before the previous ends.
  // Empty tensors own no bytes and may sit anywhere (even inside another tensor's range).
  const SafetensorsEntry* prev = nullptr;
  for (size_t i = 0; i < f.entries_.size(); ++i) {
    const auto& e = f.entries_[i];
    if (e.begin == e.end) {
      f.index_[e.name] = i;
      continue;
    }
    if (prev != nullptr && e.begin < prev->end)
      bad("tensor ", quote_name(e.name), ": data_offsets [", e.begin, ", ", e.end,
          "] overlap tensor ", quote_name(prev->name), " [", prev->begin, ", ", prev->end, "]");
    prev = &e;
    f.index_[e.name] = i;
  }
  return f;
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  out.reserve(entries_.size());
  for (const auto& e : entries_) out.push_back(e.name);
  return out;
}

bool SafetensorsFile::has(const std::string& name) const {
  return index_.count(name) != 0;
}

const SafetensorsEntry& SafetensorsFile::entry(const std::string& name) const {
  const auto it = index_.find(name);
  if (it == index_.end())
    fail(kComponent, path_, ": no tensor ", quote_name(name), " (the file has ", entries_.size(),
         " tensors)");
  return entries_[it->second];
}

Tensor SafetensorsFile::get(const std::string& name) const {
  const SafetensorsEntry& e = entry(name);
  const uint8_t* p = file_data() + data_offset_ + e.begin;
  const size_t bytes = static_cast<size_t>(e.end - e.begin);
  if (reinterpret_cast<uintptr_t>(p) % dtype_size(e.dtype) == 0)
    return Tensor::wrap(const_cast<uint8_t*>(p), e.shape, e.dtype, mapping_, /*file_mapped=*/true);
  Tensor t(e.shape, e.dtype);
  if (bytes > 0) std::memcpy(t.raw(), p, bytes);
  return t;
}

const uint8_t* SafetensorsFile::file_data() const {
  return mapping_ ? static_cast<const uint8_t*>(mapping_->addr) : nullptr;
}

size_t SafetensorsFile::file_size() const {
  return mapping_ ? mapping_->size : 0;
}

SafetensorsWriter::SafetensorsWriter(std::string path, std::vector<SafetensorsTensorSpec> specs,
                                     const std::map<std::string, std::string>& metadata)
    : path_(std::move(path)), specs_(std::move(specs)) {
  auto bad = [&](auto&&... args) { fail(kComponent, path_, ": ", args...); };
  std::set<std::string> seen;
  for (const auto& s : specs_) {
    if (s.name.empty()) bad("empty tensor name");
    if (s.name == "__metadata__") bad("tensor name '__metadata__' is reserved");
    if (!seen.insert(s.name).second) bad("duplicate tensor name ", quote_name(s.name));
    shape_numel(s.shape);  // throws on negative extents or overflow
  }

  // Larger elements first: the data buffer starts 8-aligned, so each tensor then begins at a
  // multiple of its own element size and reads back as a zero-copy view.
  order_.resize(specs_.size());
  for (size_t i = 0; i < order_.size(); ++i) order_[i] = i;
  std::stable_sort(order_.begin(), order_.end(), [&](size_t a, size_t b) {
    return dtype_size(specs_[a].dtype) > dtype_size(specs_[b].dtype);
  });

  json header = json::object();
  uint64_t offset = 0;
  for (size_t i : order_) {
    const auto& s = specs_[i];
    const uint64_t end = offset + static_cast<uint64_t>(shape_numel(s.shape)) * dtype_size(s.dtype);
    header[s.name] = {{"dtype", safetensors_dtype_name(s.dtype)},
                      {"shape", s.shape},
                      {"data_offsets", {offset, end}}};
    offset = end;
  }
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::string text;
  try {
    text = header.dump();
  } catch (const json::exception& e) {
    bad("cannot encode header: ", detail::one_line(e.what()));
  }
  text.append((8 - text.size() % 8) % 8, ' ');
  file_bytes_ = 8 + text.size() + offset;

  out_ = std::make_unique<detail::AtomicFile>(path_, kComponent);
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(text.size() >> (8 * i));
  out_->write(len, 8);
  out_->write(text.data(), text.size());
}

SafetensorsWriter::~SafetensorsWriter() = default;

const SafetensorsTensorSpec* SafetensorsWriter::next() const {
  return appended_ < order_.size() ? &specs_[order_[appended_]] : nullptr;
}

void SafetensorsWriter::append(const Tensor& t) {
  const SafetensorsTensorSpec* s = next();
  if (s == nullptr) fail(kComponent, path_, ": append() after the last tensor");
  if (!t.defined() && shape_numel(s->shape) != 0)
    fail(kComponent, path_, ": tensor ", quote_name(s->name), " is undefined");
  if (t.defined() && (t.dtype() != s->dtype || t.shape() != s->shape))
    fail(kComponent, path_, ": tensor ", quote_name(s->name), " is ", dtype_name(t.dtype()), " ",
         shape_str(t.shape()), ", declared ", dtype_name(s->dtype), " ", shape_str(s->shape));
  if (t.defined() && !t.is_contiguous())
    fail(kComponent, path_, ": tensor ", quote_name(s->name), " is not contiguous");
  append_bytes(t.defined() ? t.raw() : nullptr, t.defined() ? t.nbytes() : 0);
}

void SafetensorsWriter::append_bytes(const void* data, size_t bytes) {
  const SafetensorsTensorSpec* s = next();
  if (s == nullptr) fail(kComponent, path_, ": append() after the last tensor");
  const auto want = static_cast<uint64_t>(shape_numel(s->shape)) * dtype_size(s->dtype);
  if (bytes != want)
    fail(kComponent, path_, ": tensor ", quote_name(s->name), " got ", bytes, " bytes, needs ",
         want);
  if (bytes > 0) out_->write(data, bytes);
  ++appended_;
}

void SafetensorsWriter::commit() {
  if (const SafetensorsTensorSpec* s = next())
    fail(kComponent, path_, ": commit() before tensor ", quote_name(s->name), " was appended");
  out_->commit();
}

void write_safetensors(const std::string& path,
                       const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  std::vector<SafetensorsTensorSpec> specs;
  specs.reserve(tensors.size());
  for (const auto& [name, t] : tensors) {
    if (!t.defined()) fail(kComponent, path, ": tensor ", quote_name(name), " is undefined");
    if (!t.is_contiguous())
      fail(kComponent, path, ": tensor ", quote_name(name), " is not contiguous");
    specs.push_back({name, t.dtype(), t.shape()});
  }
  SafetensorsWriter w(path, std::move(specs), metadata);
  for (size_t i : w.order()) w.append(tensors[i].second);
  w.commit();
}

}  // namespace deltamoe::io
