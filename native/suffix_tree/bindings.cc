// nanobind adapter: translation only. Fast paths get their own names (`*_ndarray` takes int32 numpy arrays
// zero-copy, `*_list` takes Python lists) so no call pays for overload resolution.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <algorithm>

#include "suffix_cache_core.h"
#include "suffix_tree.h"

namespace nb = nanobind;
using namespace arctic_suffix;

namespace {

using I32In = nb::ndarray<const int32_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using Tokens = std::vector<int32_t>;

template <typename T>
nb::ndarray<nb::numpy, T> owned(T* data, std::initializer_list<size_t> shape) {
  nb::capsule owner(data, [](void* p) noexcept { delete[] static_cast<T*>(p); });
  return nb::ndarray<nb::numpy, T>(data, shape, owner);
}

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
           [](SuffixCacheCore& c, int32_t slot, int32_t seq, const Tokens& t) {
             c.append(slot, seq, t.data(), t.size());
             return c.global_tree().num_tokens();
           })
      .def("append_token",
           [](SuffixCacheCore& c, int32_t slot, int32_t seq, int32_t t) {
             c.append(slot, seq, &t, 1);
             return c.global_tree().num_tokens();
           })
      .def("append_batch",
           [](SuffixCacheCore& c, I32In slots, I32In seqs, I32In tokens, I32In offsets) {
             const size_t n = slots.shape(0);
             if (seqs.shape(0) != n || offsets.shape(0) != n + 1) throw std::invalid_argument("shape mismatch");
             const int32_t* off = offsets.data();
             if (off[n] > static_cast<int64_t>(tokens.shape(0))) throw std::invalid_argument("offsets out of range");
             for (size_t i = 0; i < n; ++i) {
               if (off[i] > off[i + 1] || off[i] < 0) throw std::invalid_argument("offsets must be non-decreasing");
               c.append(slots.data()[i], seqs.data()[i], tokens.data() + off[i], static_cast<size_t>(off[i + 1] - off[i]));
             }
             return c.global_tree().num_tokens();
           })
      .def("speculate_ndarray",
           [](SuffixCacheCore& c, int32_t slot, I32In ctx, int32_t k, float f, float o, float p) {
             return cache_speculate(c, slot, ctx.data(), ctx.shape(0), k, f, o, p);
           })
      .def("speculate_list",
           [](SuffixCacheCore& c, int32_t slot, const Tokens& ctx, int32_t k, float f, float o, float p) {
             return cache_speculate(c, slot, ctx.data(), ctx.size(), k, f, o, p);
           })
      .def("speculate_batch",
           [](SuffixCacheCore& c, I32In slots, I32In contexts, I32In offsets, I32In max_spec_tokens, float f, float o,
              float p) {
             const size_t n = slots.shape(0);
             if (offsets.shape(0) != n + 1 || max_spec_tokens.shape(0) != n) throw std::invalid_argument("shape mismatch");
             const int32_t* off = offsets.data();
             if (off[n] > static_cast<int64_t>(contexts.shape(0))) throw std::invalid_argument("offsets out of range");
             int32_t width = 0;
             for (size_t i = 0; i < n; ++i) width = std::max(width, max_spec_tokens.data()[i]);
             auto* tokens = new int32_t[std::max<size_t>(n * width, 1)];
             auto* probs = new float[std::max<size_t>(n * width, 1)];
             auto* lens = new int32_t[std::max<size_t>(n, 1)];
             auto* scores = new float[std::max<size_t>(n, 1)];
             auto* matches = new int32_t[std::max<size_t>(n, 1)];
             auto out_tokens = owned(tokens, {n, static_cast<size_t>(width)});
             auto out_probs = owned(probs, {n, static_cast<size_t>(width)});
             auto out_lens = owned(lens, {n});
             auto out_scores = owned(scores, {n});
             auto out_matches = owned(matches, {n});
             std::fill(tokens, tokens + n * width, -1);
             std::fill(probs, probs + n * width, 0.0f);
             for (size_t i = 0; i < n; ++i) {
               if (off[i] > off[i + 1] || off[i] < 0) throw std::invalid_argument("offsets must be non-decreasing");
               lens[i] = c.speculate(slots.data()[i], contexts.data() + off[i], static_cast<size_t>(off[i + 1] - off[i]),
                                     params(max_spec_tokens.data()[i], f, o, p), tokens + i * width, probs + i * width,
                                     scores + i, matches + i);
             }
             return nb::make_tuple(out_tokens, out_probs, out_lens, out_scores, out_matches);
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
