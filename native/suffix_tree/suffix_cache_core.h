// The native half of the suffix cache: one global tree over cached responses plus one append-only tree per
// active request (its prompt and output), addressed by small integer slots that the Python wrapper assigns.
// Policy (which responses to cache, eviction) stays in Python; everything that runs per decoding step is here,
// including batched entry points that serve a whole batch of requests in one call.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "suffix_tree.h"

namespace arctic_suffix {

class SuffixCacheCore {
 public:
  explicit SuffixCacheCore(int32_t max_depth) : max_depth_(max_depth), global_(max_depth, /*removable=*/true) {}
  SuffixCacheCore(const SuffixCacheCore&) = delete;
  SuffixCacheCore& operator=(const SuffixCacheCore&) = delete;

  int32_t max_depth() const { return max_depth_; }
  SuffixTree& global_tree() { return global_; }

  void start(int32_t slot, const int32_t* prompt, size_t n) {
    if (slot < 0) throw std::out_of_range("slot must be >= 0");
    if (static_cast<size_t>(slot) >= locals_.size()) locals_.resize(static_cast<size_t>(slot) + 1);
    if (locals_[slot]) throw std::invalid_argument("slot " + std::to_string(slot) + " is already active");
    locals_[slot] = std::make_unique<SuffixTree>(max_depth_, /*removable=*/false);
    locals_[slot]->extend(0, prompt, n);
    if (seq_of_.size() < locals_.size()) seq_of_.resize(locals_.size(), -1);
    seq_of_[slot] = -1;
  }

  void stop(int32_t slot) {
    local(slot);
    locals_[slot].reset();
  }

  bool active(int32_t slot) const {
    return slot >= 0 && static_cast<size_t>(slot) < locals_.size() && locals_[slot] != nullptr;
  }

  SuffixTree& local(int32_t slot) {
    if (!active(slot)) throw std::out_of_range("slot " + std::to_string(slot) + " is not active");
    return *locals_[slot];
  }

  // Appends generated tokens to the request's tree and, when global_seq >= 0, to its cached response.
  void append(int32_t slot, int32_t global_seq, const int32_t* tokens, size_t n) {
    local(slot).extend(0, tokens, n);
    if (global_seq >= 0) global_.extend(global_seq, tokens, n);
    seq_of_[slot] = global_seq;
  }

  // Best draft over the request's own tree and the global tree (the request's tree wins ties).
  // `ctx` is truncated to its last max_depth tokens. Writes up to p.max_spec_tokens tokens and probs.
  int32_t speculate(int32_t slot, const int32_t* ctx, size_t n, const SpecParams& p, int32_t* out_tokens,
                    float* out_probs, float* out_score, int32_t* out_match_len) {
    SuffixTree& loc = local(slot);
    if (n > static_cast<size_t>(max_depth_)) {
      ctx += n - static_cast<size_t>(max_depth_);
      n = static_cast<size_t>(max_depth_);
    }
    // The context is normally the tail of the request's own sequence (local sequence 0, and its response in the
    // global tree): the trees then find the matches without walking from the root.
    const Match a = loc.best_match_tail(0, ctx, n, p);
    const Match b = global_.num_tokens() ? global_.best_match_tail(seq_of_[slot], ctx, n, p) : Match{};
    const bool use_local = a.score >= b.score;
    const Match& m = use_local ? a : b;
    *out_score = m.score;
    *out_match_len = m.match_len;
    return (use_local ? loc : global_).write_draft(m, p.min_token_prob, out_tokens, out_probs);
  }

 private:
  int32_t max_depth_;
  SuffixTree global_;
  std::vector<std::unique_ptr<SuffixTree>> locals_;
  std::vector<int32_t> seq_of_;  // global sequence the slot last appended to (-1: none)
};

}  // namespace arctic_suffix
