// nanobind adapter: translation only. Fast paths get their own names (`*_ndarray` takes int32 numpy arrays
// zero-copy, `*_list` takes Python lists) so no call pays for overload resolution.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <climits>
#include <string>

#include "suffix_cache_core.h"
#include "suffix_tree.h"

namespace nb = nanobind;
using namespace arctic_suffix;

namespace {

using I32In = nb::ndarray<const int32_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using Tokens = std::vector<int32_t>;

SpecParams params(int32_t max_spec_tokens, float factor, float offset, float min_prob) {
  return SpecParams{max_spec_tokens, factor, offset, min_prob};
}

nb::tuple draft_tuple(const Draft& d) {
  return nb::make_tuple(d.token_ids, d.parents, d.probs, d.score, d.match_len);
}

nb::tuple cache_speculate(SuffixCacheCore& c, int32_t slot, const int32_t* ctx, size_t n, int32_t max_spec_tokens,
                          float factor, float offset, float min_prob) {
  Draft d;
  const int32_t cap = std::max(max_spec_tokens, 0);
  d.token_ids.resize(static_cast<size_t>(cap));
  d.probs.resize(static_cast<size_t>(cap));
  const int32_t k = c.speculate(slot, ctx, n, params(max_spec_tokens, factor, offset, min_prob), d.token_ids.data(),
                                d.probs.data(), &d.score, &d.match_len);
  d.token_ids.resize(static_cast<size_t>(k));
  d.probs.resize(static_cast<size_t>(k));
  d.parents.resize(static_cast<size_t>(k));
  for (int32_t i = 0; i < k; ++i) d.parents[static_cast<size_t>(i)] = i - 1;
  return draft_tuple(d);
}

// Tokens of one Python object without nanobind's generic casters: a list of ints is read into `scratch`; any
// 1-D C-contiguous int32 buffer (numpy array, memoryview) is used in place.
class TokenView {
 public:
  explicit TokenView(PyObject* o) {
    if (PyList_Check(o)) {
      const Py_ssize_t n = PyList_GET_SIZE(o);
      scratch_.resize(static_cast<size_t>(n));
      for (Py_ssize_t i = 0; i < n; ++i) {
        const long v = PyLong_AsLong(PyList_GET_ITEM(o, i));
        if (v == -1 && PyErr_Occurred()) throw nb::python_error();
        if (v < INT32_MIN || v > INT32_MAX) throw nb::value_error("token id out of int32 range");
        scratch_[static_cast<size_t>(i)] = static_cast<int32_t>(v);
      }
      data_ = scratch_.data();
      size_ = scratch_.size();
      return;
    }
    if (PyObject_GetBuffer(o, &buf_, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) != 0) {
      PyErr_Clear();
      throw nb::type_error("expected a list of ints or a 1-D contiguous int32 array");
    }
    has_buf_ = true;
    const char* f = buf_.format ? buf_.format : "B";
    if (*f == '<' || *f == '=' || *f == '@') ++f;
    if (buf_.ndim != 1 || buf_.itemsize != 4 || (std::string(f) != "i" && std::string(f) != "l")) {
      PyBuffer_Release(&buf_);  // the destructor does not run when the constructor throws
      has_buf_ = false;
      throw nb::type_error("expected a 1-D contiguous int32 array");
    }
    data_ = static_cast<const int32_t*>(buf_.buf);
    size_ = static_cast<size_t>(buf_.len / 4);
  }
  ~TokenView() {
    if (has_buf_) PyBuffer_Release(&buf_);
  }
  TokenView(const TokenView&) = delete;
  TokenView& operator=(const TokenView&) = delete;
  const int32_t* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  thread_local static std::vector<int32_t> scratch_;
  Py_buffer buf_{};
  bool has_buf_ = false;
  const int32_t* data_ = nullptr;
  size_t size_ = 0;
};
thread_local std::vector<int32_t> TokenView::scratch_;

int32_t int_at(PyObject* seq, Py_ssize_t i) {
  const long v = PyLong_AsLong(PyList_GET_ITEM(seq, i));
  if (v == -1 && PyErr_Occurred()) throw nb::python_error();
  return static_cast<int32_t>(v);
}

// A list of Python lists, one per vector; `make` turns one element into a new Python object.
template <class T, class Make>
nb::list nested_list(const std::vector<std::vector<T>>& rows, Make make) {
  nb::list out;
  for (const auto& d : rows) {
    PyObject* l = PyList_New(static_cast<Py_ssize_t>(d.size()));
    if (!l) throw nb::python_error();
    for (size_t j = 0; j < d.size(); ++j) PyList_SET_ITEM(l, static_cast<Py_ssize_t>(j), make(d[j]));
    out.append(nb::steal(l));
  }
  return out;
}

// Draft token ids as Python lists of ints.
nb::list drafts_list(const std::vector<std::vector<int32_t>>& drafts) {
  return nested_list(drafts, [](int32_t t) { return PyLong_FromLong(t); });
}

// Draft token probabilities as Python lists of floats.
nb::list probs_list(const std::vector<std::vector<float>>& probs) {
  return nested_list(probs, [](float p) { return PyFloat_FromDouble(p); });
}

}  // namespace

NB_MODULE(_suffix_tree, m) {
  m.doc() = "Native suffix tree for Suffix Decoding (see native/suffix_tree/suffix_tree.h).";

  nb::class_<SuffixTree>(m, "SuffixTree")
      .def(nb::init<int32_t, bool>(), nb::arg("max_depth"), nb::arg("removable") = true)
      .def("append", &SuffixTree::append, nb::arg("seq_id"), nb::arg("token"))
      .def("extend_list", [](SuffixTree& t, int32_t seq_id, const Tokens& tok) { t.extend(seq_id, tok.data(), tok.size()); })
      .def("extend_ndarray", [](SuffixTree& t, int32_t seq_id, I32In tok) { t.extend(seq_id, tok.data(), tok.shape(0)); })
      .def("remove", &SuffixTree::remove, nb::arg("seq_id"))
      .def("speculate_list",
           [](const SuffixTree& t, const Tokens& ctx, int32_t k, float f, float o, float p) {
             return draft_tuple(t.speculate(ctx.data(), ctx.size(), params(k, f, o, p)));
           })
      .def("speculate_ndarray",
           [](const SuffixTree& t, I32In ctx, int32_t k, float f, float o, float p) {
             return draft_tuple(t.speculate(ctx.data(), ctx.shape(0), params(k, f, o, p)));
           })
      .def("contains", &SuffixTree::contains)
      .def("seq_len", &SuffixTree::seq_len)
      .def_prop_ro("num_seqs", &SuffixTree::num_seqs)
      .def_prop_ro("num_tokens", &SuffixTree::num_tokens)
      .def_prop_ro("num_nodes", &SuffixTree::num_nodes)
      .def_prop_ro("max_depth", &SuffixTree::max_depth)
      .def("check_integrity", &SuffixTree::check_integrity)
      .def("estimate_memory", &SuffixTree::estimate_memory);

  nb::class_<SuffixCacheCore>(m, "SuffixCacheCore")
      .def(nb::init<int32_t>(), nb::arg("max_depth"))
      .def("start_ndarray", [](SuffixCacheCore& c, int32_t slot, I32In p) { c.start(slot, p.data(), p.shape(0)); })
      .def("start_list", [](SuffixCacheCore& c, int32_t slot, const Tokens& p) { c.start(slot, p.data(), p.size()); })
      .def("stop", &SuffixCacheCore::stop)
      .def("active", &SuffixCacheCore::active)
      // The append entry points return the global tree's token count (for the eviction check).
      .def("append_ndarray",
           [](SuffixCacheCore& c, int32_t slot, int32_t seq, I32In t) {
             c.append(slot, seq, t.data(), t.shape(0));
             return c.global_tree().num_tokens();
           })
      .def("append_list",
           [](SuffixCacheCore& c, int32_t slot, int32_t seq, nb::list t) {
             TokenView v(t.ptr());
             c.append(slot, seq, v.data(), v.size());
             return c.global_tree().num_tokens();
           })
      .def("append_token",
           [](SuffixCacheCore& c, int32_t slot, int32_t seq, int32_t t) {
             c.append(slot, seq, &t, 1);
             return c.global_tree().num_tokens();
           })
      .def("speculate_ndarray",
           [](SuffixCacheCore& c, int32_t slot, I32In ctx, int32_t k, float f, float o, float p) {
             return cache_speculate(c, slot, ctx.data(), ctx.shape(0), k, f, o, p);
           })
      .def("speculate_list",
           [](SuffixCacheCore& c, int32_t slot, nb::list ctx, int32_t k, float f, float o, float p) {
             TokenView v(ctx.ptr());
             return cache_speculate(c, slot, v.data(), v.size(), k, f, o, p);
           })
      // Batched entry points for a whole decoding step: plain Python lists in and out (no packing).
      .def("append_many",
           [](SuffixCacheCore& c, nb::list slots, nb::list seqs, nb::list chunks) {
             const Py_ssize_t n = PyList_GET_SIZE(slots.ptr());
             if (PyList_GET_SIZE(seqs.ptr()) != n || PyList_GET_SIZE(chunks.ptr()) != n) {
               throw std::invalid_argument("slots, seqs and chunks must have the same length");
             }
             for (Py_ssize_t i = 0; i < n; ++i) {
               TokenView t(PyList_GET_ITEM(chunks.ptr(), i));
               c.append(int_at(slots.ptr(), i), int_at(seqs.ptr(), i), t.data(), t.size());
             }
             return c.global_tree().num_tokens();
           })
      .def("speculate_many",
           [](SuffixCacheCore& c, nb::list slots, nb::list contexts, int32_t k, float f, float o, float p) {
             const Py_ssize_t n = PyList_GET_SIZE(slots.ptr());
             if (PyList_GET_SIZE(contexts.ptr()) != n) throw std::invalid_argument("slots and contexts differ in length");
             std::vector<std::vector<int32_t>> drafts(static_cast<size_t>(n));
             nb::list scores;
             std::vector<float> probs(static_cast<size_t>(std::max(k, 0)));
             for (Py_ssize_t i = 0; i < n; ++i) {
               TokenView ctx(PyList_GET_ITEM(contexts.ptr(), i));
               auto& d = drafts[static_cast<size_t>(i)];
               d.resize(static_cast<size_t>(std::max(k, 0)));
               float score;
               int32_t match_len;
               const int32_t len = c.speculate(int_at(slots.ptr(), i), ctx.data(), ctx.size(), params(k, f, o, p),
                                               d.data(), probs.data(), &score, &match_len);
               d.resize(static_cast<size_t>(len));
               scores.append(score);
             }
             return nb::make_tuple(drafts_list(drafts), scores);
           })
      .def("speculate_rows",
           [](SuffixCacheCore& c, nb::list slots, nb::ndarray<const int32_t, nb::ndim<2>, nb::c_contig, nb::device::cpu> table,
              nb::list rows, nb::list ends, nb::list limits, float f, float o, float p) {
             // Context of request i: table[rows[i], max(0, ends[i] - max_depth) : ends[i]] (vLLM's token table).
             const Py_ssize_t n = PyList_GET_SIZE(slots.ptr());
             if (PyList_GET_SIZE(rows.ptr()) != n || PyList_GET_SIZE(ends.ptr()) != n ||
                 PyList_GET_SIZE(limits.ptr()) != n) {
               throw std::invalid_argument("slots, rows, ends and limits must have the same length");
             }
             const int64_t width = static_cast<int64_t>(table.shape(1));
             std::vector<std::vector<int32_t>> drafts(static_cast<size_t>(n));
             std::vector<std::vector<float>> probs(static_cast<size_t>(n));
             nb::list scores;
             for (Py_ssize_t i = 0; i < n; ++i) {
               const int64_t row = int_at(rows.ptr(), i), end = int_at(ends.ptr(), i);
               const int32_t k = std::max(int_at(limits.ptr(), i), 0);
               if (row < 0 || static_cast<size_t>(row) >= table.shape(0) || end < 0 || end > width) {
                 throw std::out_of_range("row or end outside the token table");
               }
               const int64_t begin = std::max<int64_t>(0, end - c.max_depth());
               auto& d = drafts[static_cast<size_t>(i)];
               auto& q = probs[static_cast<size_t>(i)];
               d.resize(static_cast<size_t>(k));
               q.resize(static_cast<size_t>(k));
               float score;
               int32_t match_len;
               const int32_t len = c.speculate(int_at(slots.ptr(), i), table.data() + row * width + begin,
                                               static_cast<size_t>(end - begin), params(k, f, o, p), d.data(),
                                               q.data(), &score, &match_len);
               d.resize(static_cast<size_t>(len));
               q.resize(static_cast<size_t>(len));
               scores.append(score);
             }
             return nb::make_tuple(drafts_list(drafts), scores, probs_list(probs));
           })
      .def("remove_global", [](SuffixCacheCore& c, int32_t seq) { c.global_tree().remove(seq); })
      .def("global_contains", [](SuffixCacheCore& c, int32_t seq) { return c.global_tree().contains(seq); })
      .def("global_seq_len", [](SuffixCacheCore& c, int32_t seq) { return c.global_tree().seq_len(seq); })
      .def_prop_ro("global_num_tokens", [](SuffixCacheCore& c) { return c.global_tree().num_tokens(); })
      .def_prop_ro("global_num_seqs", [](SuffixCacheCore& c) { return c.global_tree().num_seqs(); })
      .def_prop_ro("max_depth", &SuffixCacheCore::max_depth)
      .def("local_num_tokens", [](SuffixCacheCore& c, int32_t slot) { return c.local(slot).num_tokens(); })
      .def("global_check_integrity", [](SuffixCacheCore& c) { return c.global_tree().check_integrity(); })
      .def("local_check_integrity", [](SuffixCacheCore& c, int32_t slot) { return c.local(slot).check_integrity(); })
      .def("global_estimate_memory", [](SuffixCacheCore& c) { return c.global_tree().estimate_memory(); })
      .def("local_estimate_memory", [](SuffixCacheCore& c, int32_t slot) { return c.local(slot).estimate_memory(); });
}
