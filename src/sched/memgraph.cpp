// memgraph-v1: parsing, validation, writing (.json / .json.gz) and the memory-model simulator.
// The rules implemented here are those of docs/graph_format.md; docs/formats.md
// lists the interpretation choices for the cases the format leaves open.
#include "deltamoe/sched/memgraph.h"

#include <zlib.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>
#include <unordered_map>

#include <unistd.h>

#include "deltamoe/core/error.h"

namespace deltamoe::sched {

namespace {

using nlohmann::json;
constexpr const char* kComp = "memgraph";
constexpr uint64_t kMaxDecompressed = uint64_t{4} << 30;  // refuse gzip bombs beyond 4 GiB
// ...and well before that, a file that inflates far beyond what memgraph JSON does: the
// exported graphs compress 8-10x, gen-graph's 6-9x, indented JSON a few times more; a bomb
// (runs of one byte) ~1000x. Small files may inflate to kMinInflateCap whatever their ratio.
constexpr uint64_t kMaxInflateRatio = 100;
constexpr uint64_t kMinInflateCap = uint64_t{64} << 20;

std::string node_ref(const Graph& g, int32_t v) {
  std::string s = "node id " + std::to_string(g.nodes[v].id);
  if (!g.nodes[v].name.empty()) s += " ('" + g.nodes[v].name + "')";
  return s;
}

// Finds one directed cycle (in dense indices, edges input -> reader) or returns empty.
std::vector<int32_t> find_cycle(const Graph& g) {
  const int32_t n = g.size();
  std::vector<std::vector<int32_t>> succ(n);
  for (int32_t v = 0; v < n; ++v)
    for (int32_t u : g.nodes[v].inputs) succ[u].push_back(v);
  std::vector<char> color(n, 0);  // 0 new, 1 on stack, 2 done
  std::vector<int32_t> parent(n, -1);
  std::vector<std::pair<int32_t, size_t>> stack;
  for (int32_t s = 0; s < n; ++s) {
    if (color[s]) continue;
    stack.push_back({s, 0});
    color[s] = 1;
    while (!stack.empty()) {
      auto& [v, i] = stack.back();
      if (i < succ[v].size()) {
        const int32_t w = succ[v][i++];
        if (color[w] == 0) {
          color[w] = 1;
          parent[w] = v;
          stack.push_back({w, 0});
        } else if (color[w] == 1) {
          std::vector<int32_t> cyc{w};
          for (int32_t x = v; x != w; x = parent[x]) cyc.push_back(x);
          cyc.push_back(w);
          std::reverse(cyc.begin(), cyc.end());
          return cyc;
        }
      } else {
        color[v] = 2;
        stack.pop_back();
      }
    }
  }
  return {};
}

std::string id_path(const Graph& g, const std::vector<int32_t>& path) {
  std::string s;
  for (size_t i = 0; i < path.size(); ++i) {
    if (i) s += " -> ";
    s += std::to_string(g.nodes[path[i]].id);
  }
  return s;
}

}  // namespace

// ------------------------------------------------------------------------- Graph
void Graph::finalize(const std::string& source) {
  const std::string& src = source;
  DELTAMOE_CHECK(nodes.size() <= static_cast<size_t>(std::numeric_limits<int32_t>::max()), kComp,
                 src, ": too many nodes (", nodes.size(), ")");
  const int32_t n = size();
  is_output.resize(n, 0);
  is_persistent.resize(n, 0);

  bool all_zero = n > 1;
  for (const Node& nd : nodes) all_zero = all_zero && nd.id == 0;
  if (all_zero)
    for (int32_t i = 0; i < n; ++i) nodes[i].id = i;
  {
    std::unordered_map<int64_t, int32_t> seen;
    seen.reserve(nodes.size() * 2);
    for (int32_t i = 0; i < n; ++i) {
      DELTAMOE_CHECK(nodes[i].id >= 0, kComp, src, ": node #", i, " has negative id ", nodes[i].id);
      auto [it, fresh] = seen.emplace(nodes[i].id, i);
      DELTAMOE_CHECK(fresh, kComp, src, ": duplicate id ", nodes[i].id, " (nodes #", it->second,
                     " and #", i, ")");
    }
  }
  for (int32_t v = 0; v < n; ++v) {
    Node& nd = nodes[v];
    for (int32_t u : nd.inputs)
      DELTAMOE_CHECK(u >= 0 && u < n, kComp, src, ": ", node_ref(*this, v), ": input index ", u,
                     " is out of range");
    if (nd.view_of != -1) {
      DELTAMOE_CHECK(nd.view_of >= 0 && nd.view_of < n, kComp, src, ": ", node_ref(*this, v),
                     ": view_of index ", nd.view_of, " is out of range");
      DELTAMOE_CHECK(nd.view_of != v, kComp, src, ": ", node_ref(*this, v),
                     ": is a view of itself");
      DELTAMOE_CHECK(nd.size == 0, kComp, src, ": ", node_ref(*this, v), ": a view (view_of id ",
                     nodes[nd.view_of].id, ") must have size 0, has ", nd.size);
      if (std::find(nd.inputs.begin(), nd.inputs.end(), nd.view_of) == nd.inputs.end())
        nd.inputs.push_back(nd.view_of);
    }
    // De-duplicate inputs, keeping first-seen order (inputs are short: quadratic is fine
    // below 64, a sort-based pass above).
    if (nd.inputs.size() > 1) {
      if (nd.inputs.size() <= 64) {
        size_t k = 0;
        for (size_t i = 0; i < nd.inputs.size(); ++i) {
          if (std::find(nd.inputs.begin(), nd.inputs.begin() + k, nd.inputs[i]) ==
              nd.inputs.begin() + k)
            nd.inputs[k++] = nd.inputs[i];
        }
        nd.inputs.resize(k);
      } else {
        std::vector<int32_t> sorted = nd.inputs;
        std::sort(sorted.begin(), sorted.end());
        std::vector<char> taken(sorted.size(), 0);
        size_t k = 0;
        for (size_t i = 0; i < nd.inputs.size(); ++i) {
          const size_t pos =
              std::lower_bound(sorted.begin(), sorted.end(), nd.inputs[i]) - sorted.begin();
          if (taken[pos]) continue;
          taken[pos] = 1;
          nd.inputs[k++] = nd.inputs[i];
        }
        nd.inputs.resize(k);
      }
    }
  }
  // View chains must end at a non-view.
  {
    std::vector<char> state(n, 0);  // 0 unknown, 1 visiting, 2 ok
    std::vector<int32_t> chain;
    for (int32_t v = 0; v < n; ++v) {
      chain.clear();
      int32_t x = v;
      while (x != -1 && state[x] == 0) {
        state[x] = 1;
        chain.push_back(x);
        x = nodes[x].view_of;
      }
      if (x != -1 && state[x] == 1) {
        std::vector<int32_t> cyc;
        auto it = std::find(chain.begin(), chain.end(), x);
        cyc.assign(it, chain.end());
        cyc.push_back(x);
        fail(kComp, src, ": view cycle through ids ", id_path(*this, cyc));
      }
      for (int32_t c : chain) state[c] = 2;
    }
  }
  // Program order must be topological; a back edge is either a cycle or a misordering.
  for (int32_t v = 0; v < n; ++v) {
    for (int32_t u : nodes[v].inputs) {
      if (u < v) continue;
      const std::vector<int32_t> cyc = find_cycle(*this);
      if (!cyc.empty()) fail(kComp, src, ": cycle through ids ", id_path(*this, cyc));
      fail(kComp, src, ": program order is not topological: ", node_ref(*this, v), " reads id ",
           nodes[u].id, ", which comes later in the file");
    }
  }
  // The peak is at most the sum of all sizes plus workspaces: make that fit in uint64.
  {
    uint64_t total = 0;
    for (int32_t v = 0; v < n; ++v) {
      const uint64_t add = nodes[v].size;
      const uint64_t ws = nodes[v].workspace;
      DELTAMOE_CHECK(total <= std::numeric_limits<uint64_t>::max() - add &&
                         total + add <= std::numeric_limits<uint64_t>::max() - ws,
                     kComp, src, ": ", node_ref(*this, v),
                     ": total of sizes and workspaces overflows uint64");
      total += add + ws;
    }
  }
  // Derived fields.
  base.assign(n, -1);
  users.assign(n, {});
  input_buffers.assign(n, {});
  buffer_readers.assign(n, {});
  buffer_output.assign(n, 0);
  buffer_persistent.assign(n, 0);
  for (int32_t v = 0; v < n; ++v) base[v] = nodes[v].view_of == -1 ? v : base[nodes[v].view_of];
  std::vector<int32_t> stamp(n, -1);
  for (int32_t v = 0; v < n; ++v) {
    for (int32_t u : nodes[v].inputs) {
      users[u].push_back(v);
      const int32_t b = base[u];
      if (stamp[b] != v) {
        stamp[b] = v;
        input_buffers[v].push_back(b);
        buffer_readers[b].push_back(v);
      }
    }
    if (is_output[v]) buffer_output[base[v]] = 1;
    if (is_persistent[v]) buffer_persistent[base[v]] = 1;
  }
}

bool Graph::is_free_input(int32_t v) const {
  const Node& nd = nodes[v];
  return nd.op == "input" && nd.inputs.empty() && !buffer_persistent[base[v]];
}

uint64_t Graph::own(int32_t v) const {
  if (nodes[v].view_of != -1 || buffer_persistent[v] || is_free_input(v)) return 0;
  return nodes[v].size;
}

uint64_t Graph::buffer_bytes(int32_t b) const {
  if (nodes[b].view_of != -1 || buffer_persistent[b]) return 0;
  return nodes[b].size;
}

int32_t Graph::index_of(int64_t id) const {
  for (int32_t v = 0; v < size(); ++v)
    if (nodes[v].id == id) return v;
  return -1;
}

// ------------------------------------------------------------------------- parsing
namespace {

[[noreturn]] void type_error(const std::string& src, const std::string& where, const char* want,
                             const json& got) {
  fail(kComp, src, ": ", where, " must be ", want, ", got ", got.type_name());
}

int64_t read_id(const json& j, const std::string& src, const std::string& where) {
  if (j.is_number_unsigned()) {
    const uint64_t u = j.get<uint64_t>();
    DELTAMOE_CHECK(u <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()), kComp, src,
                   ": ", where, " ", u, " is too large");
    return static_cast<int64_t>(u);
  }
  if (j.is_number_integer()) {
    const int64_t v = j.get<int64_t>();
    DELTAMOE_CHECK(v >= 0, kComp, src, ": ", where, " ", v, " is negative");
    return v;
  }
  if (j.is_number_float()) fail(kComp, src, ": ", where, " must be an integer, got ", j.dump());
  type_error(src, where, "a non-negative integer", j);
}

uint64_t read_bytes(const json& j, const std::string& src, const std::string& where) {
  if (j.is_number_unsigned()) return j.get<uint64_t>();
  if (j.is_number_integer()) fail(kComp, src, ": ", where, " is negative (", j.get<int64_t>(), ")");
  if (j.is_number_float()) {
    const double d = j.get<double>();
    if (d < 0) fail(kComp, src, ": ", where, " is negative (", j.dump(), ")");
    if (d >= 18446744073709551615.0)
      fail(kComp, src, ": ", where, " ", j.dump(), " does not fit in uint64");
    fail(kComp, src, ": ", where, " must be an integer number of bytes, got ", j.dump());
  }
  type_error(src, where, "a non-negative integer", j);
}

const json& require(const json& obj, const char* key, const std::string& src,
                    const std::string& where) {
  auto it = obj.find(key);
  if (it == obj.end()) fail(kComp, src, ": ", where, " is missing \"", key, "\"");
  return *it;
}

}  // namespace

Graph parse_memgraph(const std::string& json_text, const std::string& source) {
  const std::string& src = source;
  json doc;
  try {
    doc = json::parse(json_text);
  } catch (const json::exception& e) {
    fail(kComp, src, ": invalid JSON: ", e.what());
  }
  if (!doc.is_object()) type_error(src, "the document", "an object", doc);
  const json& fmt = require(doc, "format", src, "the document");
  if (!fmt.is_string()) type_error(src, "\"format\"", "a string", fmt);
  DELTAMOE_CHECK(fmt.get<std::string>() == "memgraph-v1", kComp, src, ": unsupported format ",
                 fmt.dump(), " (expected \"memgraph-v1\")");
  Graph g;
  if (auto it = doc.find("name"); it != doc.end()) {
    if (!it->is_string()) type_error(src, "\"name\"", "a string", *it);
    g.name = it->get<std::string>();
  }
  const json& jn = require(doc, "nodes", src, "the document");
  if (!jn.is_array()) type_error(src, "\"nodes\"", "an array", jn);
  DELTAMOE_CHECK(jn.size() <= static_cast<size_t>(std::numeric_limits<int32_t>::max()), kComp, src,
                 ": too many nodes");
  const int32_t n = static_cast<int32_t>(jn.size());
  g.nodes.resize(n);
  std::vector<std::vector<int64_t>> in_ids(n);
  std::vector<int64_t> view_ids(n, -1);
  std::unordered_map<int64_t, int32_t> index;
  index.reserve(static_cast<size_t>(n) * 2);
  for (int32_t i = 0; i < n; ++i) {
    const json& jv = jn[i];
    const std::string where = "node #" + std::to_string(i);
    if (!jv.is_object()) type_error(src, where, "an object", jv);
    Node& nd = g.nodes[i];
    nd.id = read_id(require(jv, "id", src, where), src, where + " id");
    const std::string at = "node id " + std::to_string(nd.id);
    auto [it, fresh] = index.emplace(nd.id, i);
    DELTAMOE_CHECK(fresh, kComp, src, ": duplicate id ", nd.id, " (nodes #", it->second, " and #",
                   i, ")");
    if (auto f = jv.find("name"); f != jv.end()) {
      if (!f->is_string()) type_error(src, at + " \"name\"", "a string", *f);
      nd.name = f->get<std::string>();
    }
    const json& op = require(jv, "op", src, at);
    if (!op.is_string()) type_error(src, at + " \"op\"", "a string", op);
    nd.op = op.get<std::string>();
    const json& ins = require(jv, "inputs", src, at);
    if (!ins.is_array()) type_error(src, at + " \"inputs\"", "an array", ins);
    in_ids[i].reserve(ins.size());
    for (const json& x : ins) in_ids[i].push_back(read_id(x, src, at + " input"));
    nd.size = read_bytes(require(jv, "size", src, at), src, at + " size");
    if (auto f = jv.find("workspace"); f != jv.end() && !f->is_null())
      nd.workspace = read_bytes(*f, src, at + " workspace");
    if (auto f = jv.find("view_of"); f != jv.end() && !f->is_null())
      view_ids[i] = read_id(*f, src, at + " view_of");
  }
  auto lookup = [&](int64_t id, const std::string& what) -> int32_t {
    auto it = index.find(id);
    if (it == index.end()) fail(kComp, src, ": ", what, " refers to unknown id ", id);
    return it->second;
  };
  for (int32_t i = 0; i < n; ++i) {
    Node& nd = g.nodes[i];
    const std::string at = node_ref(g, i);
    nd.inputs.reserve(in_ids[i].size());
    for (int64_t id : in_ids[i]) nd.inputs.push_back(lookup(id, at + " input"));
    if (view_ids[i] != -1) nd.view_of = lookup(view_ids[i], at + " view_of");
  }
  g.is_output.assign(n, 0);
  g.is_persistent.assign(n, 0);
  for (const char* key : {"outputs", "persistent"}) {
    auto it = doc.find(key);
    if (it == doc.end() || it->is_null()) continue;
    if (!it->is_array()) type_error(src, std::string("\"") + key + "\"", "an array", *it);
    auto& flags = key[0] == 'o' ? g.is_output : g.is_persistent;
    for (const json& x : *it)
      flags[lookup(read_id(x, src, std::string(key) + " entry"),
                   std::string("\"") + key + "\" entry")] = 1;
  }
  g.finalize(src);
  return g;
}

namespace {

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  DELTAMOE_CHECK(in, kComp, path, ": cannot open for reading");
  std::ostringstream ss;
  ss << in.rdbuf();
  DELTAMOE_CHECK(!in.bad(), kComp, path, ": read error");
  return ss.str();
}

std::string gunzip(const std::string& data, const std::string& src) {
  z_stream zs{};
  DELTAMOE_CHECK(inflateInit2(&zs, 16 + MAX_WBITS) == Z_OK, kComp, src, ": zlib init failed");
  std::string out;
  std::vector<char> buf(1 << 16);
  const uint64_t cap =
      std::min(kMaxDecompressed,
               std::max(kMinInflateCap, kMaxInflateRatio * static_cast<uint64_t>(data.size())));
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
  zs.avail_in = static_cast<uInt>(data.size());
  DELTAMOE_CHECK(data.size() <= std::numeric_limits<uInt>::max(), kComp, src, ": file too large");
  int rc = Z_OK;
  while (true) {
    zs.next_out = reinterpret_cast<Bytef*>(buf.data());
    zs.avail_out = static_cast<uInt>(buf.size());
    rc = inflate(&zs, Z_NO_FLUSH);
    if (rc != Z_OK && rc != Z_STREAM_END && rc != Z_BUF_ERROR) {
      const std::string msg = zs.msg ? zs.msg : "error " + std::to_string(rc);
      inflateEnd(&zs);
      fail(kComp, src, ": corrupt gzip data (", msg, ")");
    }
    out.append(buf.data(), buf.size() - zs.avail_out);
    if (out.size() > cap) {
      inflateEnd(&zs);
      fail(kComp, src, ": gzip data of ", data.size(), " bytes expands beyond ", cap,
           " bytes (over ", kMaxInflateRatio, "x, more than memgraph JSON compresses, or 4 GiB)");
    }
    if (rc == Z_STREAM_END) {
      // Concatenated gzip members are legal; anything else after the end is not.
      if (zs.avail_in >= 2 && zs.next_in[0] == 0x1f && zs.next_in[1] == 0x8b) {
        inflateReset(&zs);
        continue;
      }
      if (zs.avail_in != 0) {
        inflateEnd(&zs);
        fail(kComp, src, ": trailing bytes after gzip data");
      }
      break;
    }
    if (rc == Z_BUF_ERROR || (zs.avail_in == 0 && zs.avail_out != 0)) {
      inflateEnd(&zs);
      fail(kComp, src, ": truncated gzip data");
    }
  }
  inflateEnd(&zs);
  return out;
}

std::string gzip(const std::string& data, const std::string& path) {
  z_stream zs{};
  DELTAMOE_CHECK(deflateInit2(&zs, 6, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY) == Z_OK,
                 kComp, path, ": zlib init failed");
  std::string out;
  out.resize(deflateBound(&zs, data.size()));
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
  zs.avail_in = static_cast<uInt>(data.size());
  zs.next_out = reinterpret_cast<Bytef*>(out.data());
  zs.avail_out = static_cast<uInt>(out.size());
  const int rc = deflate(&zs, Z_FINISH);
  out.resize(zs.total_out);
  deflateEnd(&zs);
  DELTAMOE_CHECK(rc == Z_STREAM_END, kComp, path, ": gzip compression failed");
  return out;
}

}  // namespace

Graph read_memgraph(const std::string& path) {
  std::string data = read_all(path);
  if (data.size() >= 2 && static_cast<unsigned char>(data[0]) == 0x1f &&
      static_cast<unsigned char>(data[1]) == 0x8b)
    data = gunzip(data, path);
  return parse_memgraph(data, path);
}

std::string to_memgraph_json(const Graph& g) {
  std::string s;
  s.reserve(64 + g.nodes.size() * 96);
  s += "{\"format\": \"memgraph-v1\", \"name\": " + json(g.name).dump() + ",\n\"nodes\": [\n";
  for (int32_t v = 0; v < g.size(); ++v) {
    const Node& nd = g.nodes[v];
    s += "  {\"id\": " + std::to_string(nd.id) + ", \"name\": " + json(nd.name).dump() +
         ", \"op\": " + json(nd.op).dump() + ", \"inputs\": [";
    for (size_t i = 0; i < nd.inputs.size(); ++i) {
      if (i) s += ", ";
      s += std::to_string(g.nodes[nd.inputs[i]].id);
    }
    s += "], \"size\": " + std::to_string(nd.size);
    if (nd.workspace) s += ", \"workspace\": " + std::to_string(nd.workspace);
    if (nd.view_of != -1) s += ", \"view_of\": " + std::to_string(g.nodes[nd.view_of].id);
    s += v + 1 < g.size() ? "},\n" : "}\n";
  }
  s += "],\n";
  auto list = [&](const char* key, const std::vector<char>& flags) {
    s += std::string("\"") + key + "\": [";
    bool first = true;
    for (int32_t v = 0; v < g.size(); ++v) {
      if (v >= static_cast<int32_t>(flags.size()) || !flags[v]) continue;
      if (!first) s += ", ";
      first = false;
      s += std::to_string(g.nodes[v].id);
    }
    s += "]";
  };
  list("outputs", g.is_output);
  s += ",\n";
  list("persistent", g.is_persistent);
  s += "}\n";
  return s;
}

void write_memgraph(const Graph& g, const std::string& path) {
  std::string text = to_memgraph_json(g);
  const bool gz = path.size() >= 3 && path.compare(path.size() - 3, 3, ".gz") == 0;
  if (gz) text = gzip(text, path);
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    DELTAMOE_CHECK(out, kComp, tmp, ": cannot open for writing");
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    out.flush();
    if (!out) {
      std::filesystem::remove(tmp);
      fail(kComp, tmp, ": write failed");
    }
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::filesystem::remove(tmp);
    fail(kComp, "cannot rename '", tmp, "' to '", path, "': ", ec.message());
  }
}

// ------------------------------------------------------------------------- orders
Order program_order(const Graph& g) {
  Order o(g.size());
  for (int32_t i = 0; i < g.size(); ++i) o[i] = i;
  return o;
}

void check_order(const Graph& g, const Order& order) {
  const int32_t n = g.size();
  DELTAMOE_CHECK(order.size() == static_cast<size_t>(n), kComp, "order has ", order.size(),
                 " entries, the graph has ", n, " nodes");
  std::vector<int32_t> pos(n, -1);
  for (int32_t t = 0; t < n; ++t) {
    const int32_t v = order[t];
    DELTAMOE_CHECK(v >= 0 && v < n, kComp, "order position ", t, ": index ", v, " is not a node");
    DELTAMOE_CHECK(pos[v] == -1, kComp, "order position ", t, ": ", node_ref(g, v),
                   " appears twice");
    pos[v] = t;
  }
  for (int32_t t = 0; t < n; ++t) {
    const int32_t v = order[t];
    for (int32_t u : g.nodes[v].inputs)
      DELTAMOE_CHECK(pos[u] < t, kComp, "order position ", t, ": ", node_ref(g, v),
                     " runs before its input id ", g.nodes[u].id);
  }
}

namespace {

SimResult run_model(const Graph& g, const Order& order, std::vector<uint64_t>* profile) {
  check_order(g, order);
  const int32_t n = g.size();
  SimResult r;
  std::vector<int32_t> remaining(n, 0);
  uint64_t live = 0;
  for (int32_t b = 0; b < n; ++b) {
    if (g.nodes[b].view_of != -1) continue;
    if (g.buffer_persistent[b]) {
      r.persistent_bytes += g.nodes[b].size;
      continue;
    }
    remaining[b] = static_cast<int32_t>(g.buffer_readers[b].size());
    if (g.is_free_input(b)) live += g.nodes[b].size;
  }
  r.initial_live = live;
  r.peak = live;
  for (int32_t t = 0; t < n; ++t) {
    const int32_t v = order[t];
    const uint64_t own = g.own(v);
    const uint64_t need = live + own + g.nodes[v].workspace;
    if (profile) (*profile)[t] = need;
    if (need > r.peak) {
      r.peak = need;
      r.peak_step = t;
    }
    live += own;
    for (int32_t b : g.input_buffers[v]) {
      if (--remaining[b] == 0 && !g.buffer_output[b]) live -= g.buffer_bytes(b);
    }
    if (g.nodes[v].view_of == -1 && g.buffer_readers[v].empty() && !g.buffer_output[v])
      live -= g.buffer_bytes(v);
  }
  r.final_live = live;
  return r;
}

}  // namespace

SimResult simulate(const Graph& g, const Order& order) {
  return run_model(g, order, nullptr);
}

std::vector<uint64_t> memory_profile(const Graph& g, const Order& order, SimResult* sim) {
  std::vector<uint64_t> profile(order.size(), 0);
  const SimResult r = run_model(g, order, &profile);
  if (sim) *sim = r;
  return profile;
}

}  // namespace deltamoe::sched
