// deltamoe_sched._core: the memory scheduler (sched/) for Python, through pybind11.
//
// Graphs cross the boundary as memgraph-v1 JSON text (or a file path) and results as JSON
// text: the package's Python side turns them into dicts, so the binding stays a thin layer
// over schedule() with one format on both sides.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <unordered_map>
#include <vector>

#include "deltamoe/core/error.h"
#include "deltamoe/sched/memgraph.h"
#include "deltamoe/sched/schedule.h"
#include "deltamoe/sched/swap.h"

namespace py = pybind11;
using namespace deltamoe::sched;

namespace {

Graph load(const std::string& source, bool is_path) {
  return is_path ? read_memgraph(source) : parse_memgraph(source, "<python>");
}

// schedule() of a graph, its report as JSON text with the order's node ids.
std::string schedule_json(const std::string& source, bool is_path, const std::string& algo,
                          double time_limit_s, bool use_ilp) {
  const Graph g = load(source, is_path);
  ScheduleOptions opt;
  opt.algo = algo;
  opt.time_limit_s = time_limit_s;
  opt.use_ilp = use_ilp;
  return schedule_report_json(g, schedule(g, opt), /*with_order=*/true).dump();
}

// Dense order of node ids (checked).
Order dense_order(const Graph& g, const std::vector<int64_t>& ids) {
  std::unordered_map<int64_t, int32_t> dense;
  for (int32_t v = 0; v < g.size(); ++v) dense[g.nodes[static_cast<size_t>(v)].id] = v;
  Order order;
  for (int64_t id : ids) {
    const auto it = dense.find(id);
    DELTAMOE_CHECK(it != dense.end(), "sched", "order names node id ", id,
                   ", which the graph does not have");
    order.push_back(it->second);
  }
  check_order(g, order);
  return order;
}

// The simulator's peak (bytes) of an order given as node ids; checks the order first.
uint64_t peak_of(const std::string& source, bool is_path, const std::vector<int64_t>& ids) {
  const Graph g = load(source, is_path);
  return simulate(g, dense_order(g, ids)).peak;
}

// plan_swaps() of an order given as node ids; the report as JSON text ("swap" of the CLI).
std::string swaps_json(const std::string& source, bool is_path, const std::vector<int64_t>& ids,
                       uint64_t budget_bytes, double budget_fraction, int32_t overlap_steps,
                       bool outputs_to_host, const std::string& method, double time_limit_s,
                       double bandwidth_gb_s) {
  const Graph g = load(source, is_path);
  const Order order = dense_order(g, ids);
  SwapOptions opt;
  opt.budget_bytes = budget_bytes;
  opt.budget_fraction = budget_fraction;
  opt.overlap_steps = overlap_steps;
  opt.outputs_to_host = outputs_to_host;
  opt.method = method;
  opt.time_limit_s = time_limit_s;
  opt.bandwidth_gb_s = bandwidth_gb_s;
  return swap_report_json(g, order, plan_swaps(g, order, opt), opt).dump();
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "deltamoe's memory scheduler (C++); use the deltamoe_sched package, not this module";
  // Our errors carry "[component] what and where": a bad graph or argument, so ValueError.
  py::register_exception<deltamoe::Error>(m, "SchedError", PyExc_ValueError);
  m.def("schedule", &schedule_json, py::arg("source"), py::arg("is_path"), py::arg("algo"),
        py::arg("time_limit_s"), py::arg("use_ilp"), py::call_guard<py::gil_scoped_release>(),
        "Orders a memgraph-v1 graph (JSON text, or a path when is_path) for least peak "
        "memory; returns the report as JSON text, with \"order\" (node ids).");
  m.def("peak", &peak_of, py::arg("source"), py::arg("is_path"), py::arg("order"),
        py::call_guard<py::gil_scoped_release>(),
        "Peak bytes of an order (node ids) under the memgraph-v1 memory model.");
  m.def("swap_plan", &swaps_json, py::arg("source"), py::arg("is_path"), py::arg("order"),
        py::arg("budget_bytes"), py::arg("budget_fraction"), py::arg("overlap_steps"),
        py::arg("outputs_to_host"), py::arg("method"), py::arg("time_limit_s"),
        py::arg("bandwidth_gb_s"), py::call_guard<py::gil_scoped_release>(),
        "Swap plan of an order (node ids) under a budget (bytes, or when 0 a share of the "
        "order's peak); the report as JSON text.");
  m.def("ilp_available", &ilp_available, "Whether the exact ILP (COIN-OR CBC) was built in.");
}
