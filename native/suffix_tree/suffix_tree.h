// A suffix tree over many token sequences, for Suffix Decoding (arXiv 2411.04975).
//
// Every sequence contributes all of its suffixes, each truncated to `max_depth` tokens (a sliding window: a
// suffix stops growing once it is max_depth long). A node's `count` is the number of (sequence, start) suffixes
// that pass through or end at it, i.e. the number of occurrences of the node's path as a substring. Paths are
// compressed: a node holds `length` tokens, stored as a reference (ref_seq, ref_idx) into a sequence's tokens.
//
// Children are kept in a doubly linked list ordered by decreasing count, with equal counts grouped so that a
// count change moves a node in O(1); the head child is the most frequent continuation. The order among equal
// counts follows the same rules as Arctic Inference's tree, so both trees draft the same tokens.
//
// Pure C++17, no Python. Nodes, groups and sequences live in arenas addressed by int32 indices.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "child_map.h"

namespace arctic_suffix {

struct Draft {
  std::vector<int32_t> token_ids;  // drafted tokens
  std::vector<int32_t> parents;    // index of each token's parent in token_ids (-1 for the first)
  std::vector<float> probs;        // estimated probability of each token
  float score = 0.0f;              // sum of probs
  int32_t match_len = 0;           // length of the context suffix the draft was taken from
};

struct SpecParams {
  int32_t max_spec_tokens = 16;
  float max_spec_factor = 1.0f;
  float max_spec_offset = 0.0f;
  float min_token_prob = 0.1f;
};

// The best place to draft from, found by SuffixTree::best_match; materialised by SuffixTree::write_draft.
struct Match {
  int32_t node = -1;
  int32_t idx = 0;  // tokens of `node` already matched
  int32_t match_len = 0;
  int32_t max_tokens = 0;
  float score = 0.0f;
};

class SuffixTree {
 public:
  // removable=false drops the bookkeeping that `remove` needs (per-node endpoint lists); used for the
  // per-request trees, which are only ever appended to and then dropped whole.
  explicit SuffixTree(int32_t max_depth, bool removable = true);

  void append(int32_t seq_id, int32_t token);
  void extend(int32_t seq_id, const int32_t* tokens, size_t n);
  void remove(int32_t seq_id);

  bool contains(int32_t seq_id) const { return seq_slot_.count(seq_id) != 0; }
  int32_t num_seqs() const { return static_cast<int32_t>(seq_slot_.size()); }
  int64_t num_tokens() const { return num_tokens_; }
  int32_t num_nodes() const { return num_nodes_; }
  int32_t max_depth() const { return max_depth_; }
  bool removable() const { return removable_; }
  // Length of one sequence (0 when absent).
  int64_t seq_len(int32_t seq_id) const;

  // Tries every suffix of `ctx` (shortest first, stopping at the first that is absent) and returns where the
  // best-scoring draft starts; ties go to the longer match.
  Match best_match(const int32_t* ctx, size_t n, const SpecParams& p) const { return best_match_tail(-1, ctx, n, p); }
  // Same result as best_match. When `seq_id` is a sequence of this tree whose last tokens equal the last tokens
  // of ctx (a request drafting from its own history), the nodes of those matches are read from the sequence's
  // endpoint array instead of walking from the root.
  Match best_match_tail(int32_t seq_id, const int32_t* ctx, size_t n, const SpecParams& p) const;
  // Writes the draft for `m` into out_tokens/out_probs (capacity m.max_tokens); returns its length.
  int32_t write_draft(const Match& m, float min_token_prob, int32_t* out_tokens, float* out_probs) const;
  Draft speculate(const int32_t* ctx, size_t n, const SpecParams& p) const;

  // Empty string when every invariant holds, otherwise a description of the first violation. Slow.
  std::string check_integrity() const;
  // Bytes held by this tree (arenas and tables at their current capacity).
  size_t estimate_memory() const;

 private:
  struct Node {
    int32_t count = 0;
    int32_t token = 0;   // first token of the node
    int32_t length = 0;  // tokens in the node
    int32_t ref_seq = -1;  // sequence slot holding the node's tokens
    int32_t ref_idx = -1;  // index of the first token in that sequence
    int32_t parent = -1;
    int32_t head_child = -1;
    int32_t tail_child = -1;
    int32_t next_sibling = -1;
    int32_t prev_sibling = -1;
    int32_t group = -1;
    int32_t num_children = 0;
    int64_t ep_head = -1;  // first endpoint record ending here (removable trees only)
  };
  struct Group {
    int32_t head = -1;
    int32_t next = -1;
    int32_t prev = -1;
    int32_t members = 0;
  };
  struct Seq {
    int32_t id = -1;
    std::vector<int32_t> tokens;
    // ep_node[start]: node where the suffix starting at `start` currently ends. The last max_depth entries
    // are the "active" suffixes that still grow as tokens are appended.
    std::vector<int32_t> ep_node;
    // Doubly linked lists of endpoint records per node (removable trees only); a record is (slot << 32 | start).
    std::vector<int64_t> ep_next;
    std::vector<int64_t> ep_prev;
  };

  static constexpr int32_t kRoot = 0;
  // Children of a node with at most this many children are found by scanning its sibling list (the nodes are
  // touched next anyway); only larger nodes keep their children in the hash map. Most nodes are small, so most
  // lookups, inserts and re-keyings never touch the map.
  static constexpr int32_t kSmallNode = 4;

  int32_t find_child(int32_t n, int32_t token) const {
    const Node& nd = nodes_[n];
    if (nd.num_children > kSmallNode) return children_.find(n, token);
    for (int32_t c = nd.head_child; c >= 0; c = nodes_[c].next_sibling) {
      if (nodes_[c].token == token) return c;
    }
    return -1;
  }
  void map_set(int32_t parent, int32_t token, int32_t child) {
    if (nodes_[parent].num_children > kSmallNode) children_.set(parent, token, child);
  }
  void map_erase(int32_t parent, int32_t token) {
    if (nodes_[parent].num_children > kSmallNode) children_.erase(parent, token);
  }
  void add_child(int32_t parent, int32_t child);     // at the end of the sibling list
  void drop_child(int32_t parent, int32_t child);    // unlink (the caller frees the subtree)

  int32_t alloc_node(int32_t count, int32_t token, int32_t length, int32_t ref_seq, int32_t ref_idx,
                     int32_t parent);
  void free_node(int32_t n);
  void free_subtree(int32_t n);
  int32_t alloc_group(int32_t head);
  void join_group(int32_t n, int32_t g);
  void leave_group(int32_t n);

  void remove_from_siblings(int32_t n);
  void insert_before(int32_t n, int32_t other);
  void insert_after(int32_t n, int32_t other);
  void replace_in_siblings(int32_t old_n, int32_t new_n);
  void add_first_child(int32_t parent, int32_t child);
  void increment(int32_t n);
  void decrement(int32_t n);

  void ep_link(int32_t node, int32_t slot, int32_t start);
  void ep_unlink(int32_t slot, int32_t start);
  void ep_move(int32_t slot, int32_t start, int32_t to);

  void append_slot(int32_t slot, int32_t token);
  int32_t slot_for(int32_t seq_id);
  const int32_t* ref_ptr(const Node& n) const { return seq_data_[n.ref_seq] + n.ref_idx; }
  float path_score(int32_t node, int32_t idx, int32_t max_tokens, float min_prob) const;
  // Walks ctx[n-m:] from the root; false if it is not in the tree.
  bool match_from_root(const int32_t* ctx, size_t n, int32_t m, int32_t* node, int32_t* idx) const;
  std::string check_node(int32_t n) const;

  int32_t max_depth_;
  bool removable_;
  std::vector<Node> nodes_;
  std::vector<int32_t> free_nodes_;
  int32_t num_nodes_ = 0;
  std::vector<Group> groups_;
  std::vector<int32_t> free_groups_;
  ChildMap children_;
  std::vector<Seq> seqs_;
  // seq_data_[slot] == seqs_[slot].tokens.data(), kept in a compact array: reading a node's tokens is one hop.
  std::vector<const int32_t*> seq_data_;
  std::vector<int32_t> free_slots_;
  std::unordered_map<int32_t, int32_t> seq_slot_;
  int32_t last_seq_id_ = -1;  // one-entry cache for seq_slot_ lookups
  int32_t last_slot_ = -1;
  int64_t num_tokens_ = 0;
};

}  // namespace arctic_suffix
