#include "suffix_tree.h"

#include <algorithm>
#include <stdexcept>

namespace arctic_suffix {

namespace {
constexpr int64_t kRecMask = 0xFFFFFFFFLL;
inline int64_t rec_of(int32_t slot, int32_t start) { return (static_cast<int64_t>(slot) << 32) | start; }
inline int32_t rec_slot(int64_t rec) { return static_cast<int32_t>(rec >> 32); }
inline int32_t rec_start(int64_t rec) { return static_cast<int32_t>(rec & kRecMask); }
}  // namespace

SuffixTree::SuffixTree(int32_t max_depth, bool removable) : max_depth_(max_depth), removable_(removable) {
  if (max_depth < 1) throw std::invalid_argument("max_depth must be >= 1");
  nodes_.emplace_back();  // the root: no tokens, count = number of suffixes in the tree
  num_nodes_ = 1;
}

// ---------------------------------------------------------------------------------------------------------------
// Arenas

int32_t SuffixTree::alloc_node(int32_t count, int32_t token, int32_t length, int32_t ref_seq, int32_t ref_idx,
                               int32_t parent) {
  int32_t n;
  if (!free_nodes_.empty()) {
    n = free_nodes_.back();
    free_nodes_.pop_back();
  } else {
    n = static_cast<int32_t>(nodes_.size());
    nodes_.emplace_back();
  }
  Node& nd = nodes_[n];
  nd = Node{};
  nd.count = count;
  nd.token = token;
  nd.length = length;
  nd.ref_seq = ref_seq;
  nd.ref_idx = ref_idx;
  nd.parent = parent;
  ++num_nodes_;
  return n;
}

void SuffixTree::free_node(int32_t n) {
  leave_group(n);
  nodes_[n] = Node{};
  nodes_[n].count = -1;  // marks a free node (integrity check)
  free_nodes_.push_back(n);
  --num_nodes_;
}

void SuffixTree::free_subtree(int32_t top) {
  std::vector<int32_t> stack{top};
  while (!stack.empty()) {
    const int32_t n = stack.back();
    stack.pop_back();
    for (int32_t c = nodes_[n].head_child; c >= 0; c = nodes_[c].next_sibling) {
      map_erase(n, nodes_[c].token);
      stack.push_back(c);
    }
    free_node(n);
  }
}

int32_t SuffixTree::alloc_group(int32_t head) {
  int32_t g;
  if (!free_groups_.empty()) {
    g = free_groups_.back();
    free_groups_.pop_back();
  } else {
    g = static_cast<int32_t>(groups_.size());
    groups_.emplace_back();
  }
  groups_[g] = Group{head, -1, -1, 0};
  return g;
}

void SuffixTree::join_group(int32_t n, int32_t g) {
  if (nodes_[n].group == g) return;
  leave_group(n);
  nodes_[n].group = g;
  ++groups_[g].members;
}

void SuffixTree::leave_group(int32_t n) {
  const int32_t g = nodes_[n].group;
  if (g < 0) return;
  nodes_[n].group = -1;
  if (--groups_[g].members == 0) free_groups_.push_back(g);
}

// ---------------------------------------------------------------------------------------------------------------
// Sibling lists ordered by decreasing count; runs of equal counts share a group whose head is the run's first node.

void SuffixTree::remove_from_siblings(int32_t n) {
  Node& nd = nodes_[n];
  const int32_t g = nd.group;
  if (groups_[g].head == n) {
    if (nd.next_sibling >= 0 && nodes_[nd.next_sibling].count == nd.count) {
      groups_[g].head = nd.next_sibling;
      leave_group(n);
    } else {
      // Sole member: unlink the group but let the node keep it (it may be reused on re-insertion).
      Group& gr = groups_[g];
      if (gr.prev >= 0) groups_[gr.prev].next = gr.next;
      if (gr.next >= 0) groups_[gr.next].prev = gr.prev;
      gr.prev = gr.next = -1;
    }
  } else {
    leave_group(n);
  }
  Node& parent = nodes_[nd.parent];
  if (nd.next_sibling >= 0) {
    nodes_[nd.next_sibling].prev_sibling = nd.prev_sibling;
  } else {
    parent.tail_child = nd.prev_sibling;
  }
  if (nd.prev_sibling >= 0) {
    nodes_[nd.prev_sibling].next_sibling = nd.next_sibling;
  } else {
    parent.head_child = nd.next_sibling;
  }
  nd.prev_sibling = nd.next_sibling = -1;
}

void SuffixTree::insert_before(int32_t n, int32_t other) {
  Node& nd = nodes_[n];
  Node& ot = nodes_[other];
  if (ot.prev_sibling >= 0) {
    nodes_[ot.prev_sibling].next_sibling = n;
  } else {
    nodes_[nd.parent].head_child = n;
  }
  nd.next_sibling = other;
  nd.prev_sibling = ot.prev_sibling;
  ot.prev_sibling = n;
  const int32_t prev = nd.prev_sibling;
  if (prev >= 0 && nd.count == nodes_[prev].count) {
    join_group(n, nodes_[prev].group);
  } else if (nd.count == ot.count) {
    join_group(n, ot.group);
    groups_[ot.group].head = n;
  } else {
    int32_t g = nd.group;
    if (g < 0) {
      g = alloc_group(n);
      join_group(n, g);
    }
    if (prev >= 0) {
      groups_[g].prev = nodes_[prev].group;
      groups_[groups_[g].prev].next = g;
    }
    groups_[g].next = ot.group;
    groups_[ot.group].prev = g;
  }
}

void SuffixTree::insert_after(int32_t n, int32_t other) {
  Node& nd = nodes_[n];
  Node& ot = nodes_[other];
  if (ot.next_sibling >= 0) {
    nodes_[ot.next_sibling].prev_sibling = n;
  } else {
    nodes_[nd.parent].tail_child = n;
  }
  nd.prev_sibling = other;
  nd.next_sibling = ot.next_sibling;
  ot.next_sibling = n;
  const int32_t next = nd.next_sibling;
  if (next >= 0 && nd.count == nodes_[next].count) {
    const int32_t g = nodes_[next].group;
    join_group(n, g);
    if (groups_[g].head == next) groups_[g].head = n;
  } else if (nd.count == ot.count) {
    join_group(n, ot.group);
  } else {
    int32_t g = nd.group;
    if (g < 0) {
      g = alloc_group(n);
      join_group(n, g);
    }
    if (next >= 0) {
      groups_[g].next = nodes_[next].group;
      groups_[groups_[g].next].prev = g;
    }
    groups_[g].prev = ot.group;
    groups_[ot.group].next = g;
  }
}

void SuffixTree::replace_in_siblings(int32_t old_n, int32_t new_n) {
  Node& od = nodes_[old_n];
  Node& nw = nodes_[new_n];
  Node& parent = nodes_[od.parent];
  if (od.next_sibling >= 0) {
    nodes_[od.next_sibling].prev_sibling = new_n;
  } else {
    parent.tail_child = new_n;
  }
  if (od.prev_sibling >= 0) {
    nodes_[od.prev_sibling].next_sibling = new_n;
  } else {
    parent.head_child = new_n;
  }
  nw.prev_sibling = od.prev_sibling;
  nw.next_sibling = od.next_sibling;
  od.prev_sibling = od.next_sibling = -1;
  const int32_t g = od.group;
  if (groups_[g].head == old_n) groups_[g].head = new_n;
  join_group(new_n, g);
  leave_group(old_n);
}

void SuffixTree::add_child(int32_t parent, int32_t child) {
  Node& p = nodes_[parent];
  if (p.num_children == 0) {
    add_first_child(parent, child);
  } else {
    insert_after(child, p.tail_child);
  }
  const int32_t n = ++nodes_[parent].num_children;
  if (n == kSmallNode + 1) {
    for (int32_t c = nodes_[parent].head_child; c >= 0; c = nodes_[c].next_sibling) {
      children_.set(parent, nodes_[c].token, c);
    }
  } else if (n > kSmallNode + 1) {
    children_.set(parent, nodes_[child].token, child);
  }
}

void SuffixTree::drop_child(int32_t parent, int32_t child) {
  map_erase(parent, nodes_[child].token);
  remove_from_siblings(child);
  const int32_t n = --nodes_[parent].num_children;
  if (n == kSmallNode) {
    for (int32_t c = nodes_[parent].head_child; c >= 0; c = nodes_[c].next_sibling) {
      children_.erase(parent, nodes_[c].token);
    }
  }
}

void SuffixTree::add_first_child(int32_t parent, int32_t child) {
  nodes_[parent].head_child = nodes_[parent].tail_child = child;
  const int32_t g = alloc_group(child);
  join_group(child, g);
}

void SuffixTree::increment(int32_t n) {
  Node& nd = nodes_[n];
  if (n == kRoot) {
    ++nd.count;
    return;
  }
  if (nd.prev_sibling < 0 || nodes_[nd.prev_sibling].count > nd.count + 1) {
    if (nd.next_sibling < 0 || nodes_[nd.next_sibling].count < nd.count) {
      ++nd.count;  // alone in its group and stays so
    } else {
      // Split off the front of the group into a new group of its own.
      const int32_t orig = nd.group;
      groups_[orig].head = nd.next_sibling;
      const int32_t ng = alloc_group(n);
      groups_[ng].next = orig;
      if (groups_[orig].prev >= 0) {
        groups_[ng].prev = groups_[orig].prev;
        groups_[groups_[ng].prev].next = ng;
      }
      groups_[orig].prev = ng;
      join_group(n, ng);
      ++nodes_[n].count;
    }
  } else {
    const int32_t other = groups_[nodes_[nd.prev_sibling].group].head;
    remove_from_siblings(n);
    ++nodes_[n].count;
    insert_before(n, other);
  }
}

void SuffixTree::decrement(int32_t n) {
  Node& nd = nodes_[n];
  if (n == kRoot) {
    --nd.count;
    return;
  }
  if (nd.next_sibling < 0 || nodes_[nd.next_sibling].count < nd.count - 1) {
    if (nd.prev_sibling < 0 || nodes_[nd.prev_sibling].count > nd.count) {
      --nd.count;
    } else {
      // Split off the back of the group into a new group of its own.
      const int32_t orig = nd.group;
      const int32_t ng = alloc_group(n);
      groups_[ng].prev = orig;
      if (groups_[orig].next >= 0) {
        groups_[ng].next = groups_[orig].next;
        groups_[groups_[ng].next].prev = ng;
      }
      groups_[orig].next = ng;
      join_group(n, ng);
      --nodes_[n].count;
    }
  } else if (nodes_[nd.next_sibling].count == nd.count - 1) {
    // Stays in place and joins the next group as its head.
    const int32_t next_group = nodes_[nd.next_sibling].group;
    groups_[next_group].head = n;
    const int32_t g = nd.group;
    if (groups_[g].head == n) {
      if (groups_[g].prev >= 0) groups_[groups_[g].prev].next = groups_[g].next;
      groups_[groups_[g].next].prev = groups_[g].prev;
    }
    join_group(n, next_group);
    --nodes_[n].count;
  } else {
    // Moves to the front of the next group (or the end of the list).
    const int32_t other_group = groups_[nd.group].next;
    remove_from_siblings(n);
    --nodes_[n].count;
    if (other_group < 0) {
      insert_after(n, nodes_[nodes_[n].parent].tail_child);
    } else {
      insert_before(n, groups_[other_group].head);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Endpoint records: where each suffix currently ends (lists per node only in removable trees).

void SuffixTree::ep_link(int32_t node, int32_t slot, int32_t start) {
  Seq& s = seqs_[slot];
  s.ep_node[start] = node;
  if (!removable_) return;
  const int64_t rec = rec_of(slot, start);
  const int64_t head = nodes_[node].ep_head;
  s.ep_prev[start] = -1;
  s.ep_next[start] = head;
  if (head >= 0) seqs_[rec_slot(head)].ep_prev[rec_start(head)] = rec;
  nodes_[node].ep_head = rec;
}

void SuffixTree::ep_unlink(int32_t slot, int32_t start) {
  if (!removable_) return;
  Seq& s = seqs_[slot];
  const int32_t node = s.ep_node[start];
  if (node == kRoot) return;  // the root never holds endpoints
  const int64_t prev = s.ep_prev[start];
  const int64_t next = s.ep_next[start];
  if (prev >= 0) {
    seqs_[rec_slot(prev)].ep_next[rec_start(prev)] = next;
  } else {
    nodes_[node].ep_head = next;
  }
  if (next >= 0) seqs_[rec_slot(next)].ep_prev[rec_start(next)] = prev;
  s.ep_prev[start] = s.ep_next[start] = -1;
}

void SuffixTree::ep_move(int32_t slot, int32_t start, int32_t to) {
  ep_unlink(slot, start);
  ep_link(to, slot, start);
}

// ---------------------------------------------------------------------------------------------------------------
// Updates

int32_t SuffixTree::slot_for(int32_t seq_id) {
  if (seq_id == last_seq_id_) return last_slot_;
  auto it = seq_slot_.find(seq_id);
  int32_t slot;
  if (it != seq_slot_.end()) {
    slot = it->second;
  } else {
    if (!free_slots_.empty()) {
      slot = free_slots_.back();
      free_slots_.pop_back();
    } else {
      slot = static_cast<int32_t>(seqs_.size());
      seqs_.emplace_back();
      seq_data_.push_back(nullptr);
    }
    seqs_[slot].id = seq_id;
    seq_slot_.emplace(seq_id, slot);
  }
  last_seq_id_ = seq_id;
  last_slot_ = slot;
  return slot;
}

int64_t SuffixTree::seq_len(int32_t seq_id) const {
  auto it = seq_slot_.find(seq_id);
  return it == seq_slot_.end() ? 0 : static_cast<int64_t>(seqs_[it->second].tokens.size());
}

void SuffixTree::append(int32_t seq_id, int32_t token) { append_slot(slot_for(seq_id), token); }

void SuffixTree::extend(int32_t seq_id, const int32_t* tokens, size_t n) {
  if (n == 0) return;
  const int32_t slot = slot_for(seq_id);
  Seq& s = seqs_[slot];
  const size_t need = s.tokens.size() + n;
  if (need > s.tokens.capacity()) {
    // Grow geometrically (an exact reserve per call would copy the whole sequence on every call).
    const size_t cap = std::max(need, 2 * s.tokens.capacity());
    s.tokens.reserve(cap);
    s.ep_node.reserve(cap);
    if (removable_) {
      s.ep_next.reserve(cap);
      s.ep_prev.reserve(cap);
    }
    seq_data_[slot] = s.tokens.data();
  }
  for (size_t i = 0; i < n; ++i) append_slot(slot, tokens[i]);
}

void SuffixTree::append_slot(int32_t slot, int32_t token) {
  Seq& s = seqs_[slot];
  const int32_t L = static_cast<int32_t>(s.tokens.size());
  const int32_t seq_len = L + 1;
  s.tokens.push_back(token);
  seq_data_[slot] = s.tokens.data();  // may have moved
  s.ep_node.push_back(kRoot);
  if (removable_) {
    s.ep_next.push_back(-1);
    s.ep_prev.push_back(-1);
  }
  ++nodes_[kRoot].count;
  ++num_tokens_;

  const int32_t first = std::max(0, seq_len - max_depth_);
  // Extend every active suffix (oldest first) by the new token.
  for (int32_t start = first; start <= L; ++start) {
    const int32_t node = s.ep_node[start];
    const int32_t child = find_child(node, token);
    if (child < 0) {
      if (node != kRoot && nodes_[node].count == 1) {
        // Only this suffix reaches the node, so it is a leaf referencing this sequence: grow it in place.
        ++nodes_[node].length;
      } else {
        const int32_t nc = alloc_node(1, token, 1, slot, seq_len - 1, node);
        add_child(node, nc);
        ep_move(slot, start, nc);
      }
    } else if (node != kRoot && nodes_[node].count == nodes_[child].count + 1) {
      // This suffix ends at the node and every other one continues into `child`.
      if (nodes_[child].length == 1) {
        // The grown suffix coincides with the child: fuse the node into the child.
        Node& c = nodes_[child];
        const Node& nd = nodes_[node];
        c.count += 1;
        c.token = nd.token;
        c.length = nd.length + 1;
        c.ref_seq = slot;
        c.ref_idx = seq_len - c.length;
        c.parent = nd.parent;
        replace_in_siblings(node, child);
        map_set(c.parent, c.token, child);
        ep_move(slot, start, child);
        free_node(node);
      } else {
        // Grow the node by one token taken from the front of the child.
        Node& nd = nodes_[node];
        Node& c = nodes_[child];
        nd.length += 1;
        nd.ref_seq = slot;
        nd.ref_idx = seq_len - nd.length;
        c.length -= 1;
        c.ref_idx += 1;
        c.token = seq_data_[c.ref_seq][c.ref_idx];  // the node has one child: no map entry to re-key
      }
    } else if (nodes_[child].length == 1) {
      ep_move(slot, start, child);
      increment(child);
    } else {
      // Split the child after its first token.
      const int32_t nn = alloc_node(nodes_[child].count, token, 1, slot, seq_len - 1, node);
      replace_in_siblings(child, nn);
      map_set(node, token, nn);
      Node& c = nodes_[child];
      c.length -= 1;
      c.ref_idx += 1;
      c.token = seq_data_[c.ref_seq][c.ref_idx];
      c.parent = nn;
      nodes_[nn].num_children = 1;
      add_first_child(nn, child);
      ep_move(slot, start, nn);
      increment(nn);
    }
  }
}

void SuffixTree::remove(int32_t seq_id) {
  auto it = seq_slot_.find(seq_id);
  if (it == seq_slot_.end()) throw std::out_of_range("unknown sequence id " + std::to_string(seq_id));
  if (!removable_) throw std::logic_error("this tree was built with removable=false");
  const int32_t slot = it->second;
  const std::vector<int32_t>& seq = seqs_[slot].tokens;
  const int32_t len = static_cast<int32_t>(seq.size());
  std::vector<int32_t> path;
  for (int32_t start = 0; start < len; ++start) {
    ep_unlink(slot, start);
    int32_t node = kRoot;
    --nodes_[kRoot].count;
    int32_t idx = start;
    path.clear();
    while (idx < len) {
      const int32_t tok = seq[idx];
      const int32_t child = find_child(node, tok);
      if (child < 0) break;
      if (nodes_[child].count > 1) {
        decrement(child);
      } else {
        // Only this suffix reaches the child: drop it with its subtree.
        drop_child(node, child);
        free_subtree(child);
        break;
      }
      idx += nodes_[child].length;
      node = child;
      path.push_back(node);
    }
    // The last node may now have a single child with the same count: merge them.
    if (node != kRoot && nodes_[node].num_children == 1) {
      const int32_t c = nodes_[node].head_child;
      if (nodes_[node].count == nodes_[c].count) {
        Node& cn = nodes_[c];
        const Node& nd = nodes_[node];
        cn.token = nd.token;
        cn.length += nd.length;
        cn.ref_idx -= nd.length;
        cn.parent = nd.parent;
        replace_in_siblings(node, c);
        map_set(cn.parent, cn.token, c);
        free_node(node);
        node = c;
        path.back() = c;
      }
    }
    if (path.empty()) continue;
    // Nodes on the path that reference this sequence need a new reference: take an endpoint of another
    // sequence below them (any suffix ending in the subtree passes through every node on the path).
    int32_t leaf = node;
    int32_t distance = 0;
    while (nodes_[leaf].num_children > 0) {
      leaf = nodes_[leaf].head_child;
      distance += nodes_[leaf].length;
    }
    int64_t rec = nodes_[leaf].ep_head;
    while (rec >= 0 && rec_slot(rec) == slot) rec = seqs_[rec_slot(rec)].ep_next[rec_start(rec)];
    if (rec < 0) continue;  // only endpoints of this sequence: a later suffix of it will pass here again
    const int32_t r_slot = rec_slot(rec);
    const int32_t r_start = rec_start(rec);
    const int32_t r_len = static_cast<int32_t>(seqs_[r_slot].tokens.size());
    int32_t ref_idx = std::min(r_start + max_depth_, r_len) - distance;
    for (auto p = path.rbegin(); p != path.rend(); ++p) {
      Node& pn = nodes_[*p];
      ref_idx -= pn.length;
      if (pn.ref_seq == slot) {
        pn.ref_seq = r_slot;
        pn.ref_idx = ref_idx;
      }
    }
  }
  num_tokens_ -= len;
  Seq empty;
  std::swap(seqs_[slot], empty);
  seq_data_[slot] = nullptr;
  free_slots_.push_back(slot);
  seq_slot_.erase(it);
  last_seq_id_ = last_slot_ = -1;
}

// ---------------------------------------------------------------------------------------------------------------
// Speculation

float SuffixTree::path_score(int32_t node, int32_t idx, int32_t max_tokens, float min_prob) const {
  float prob = 1.0f;
  float score = 0.0f;
  int32_t n = 0;
  const Node* nd = &nodes_[node];
  while (n < max_tokens && prob >= min_prob) {
    if (idx < nd->length) {
      const int32_t k = std::min(nd->length - idx, max_tokens - n);
      for (int32_t j = 0; j < k; ++j) score += prob;  // sequential float adds: same rounding as one by one
      n += k;
      idx += k;
    } else {
      if (nd->head_child < 0) break;
      const Node* c = &nodes_[nd->head_child];
      prob *= static_cast<float>(c->count) / static_cast<float>(nd->count);
      nd = c;
      idx = 0;
    }
  }
  return score;
}

bool SuffixTree::match_from_root(const int32_t* ctx, size_t n, int32_t m, int32_t* out_node,
                                 int32_t* out_idx) const {
  const int32_t* c = ctx + (n - static_cast<size_t>(m));
  const Node* nodes = nodes_.data();
  int32_t node = kRoot;
  int32_t idx = 0;
  int32_t len = 0;
  const int32_t* ref = nullptr;
  for (int32_t i = 0; i < m; ++i) {
    const int32_t t = c[i];
    if (idx >= len) {
      const int32_t child = find_child(node, t);
      if (child < 0) return false;
      node = child;
      ref = ref_ptr(nodes[node]);
      len = nodes[node].length;
      idx = 1;  // the first token of a child is its key
      continue;
    }
    if (ref[idx] != t) return false;
    ++idx;
  }
  *out_node = node;
  *out_idx = idx;
  return true;
}

Match SuffixTree::best_match_tail(int32_t seq_id, const int32_t* ctx, size_t n, const SpecParams& p) const {
  // Candidates are the suffixes ctx[n-m:] for m = 1 .. n-1, shortest first, up to the first one that is absent
  // (if ctx[n-m:] is absent so is every longer one). The best score wins; ties go to the longer match.
  Match best;
  if (n < 2) return best;
  const int32_t max_m = static_cast<int32_t>(std::min<size_t>(n - 1, static_cast<size_t>(max_depth_)));
  // Matches that are tails of the hinted sequence: their end nodes are that sequence's endpoints.
  int32_t tail = 0;
  const Seq* seq = nullptr;
  if (seq_id >= 0) {
    auto it = seq_slot_.find(seq_id);
    if (it != seq_slot_.end()) {
      seq = &seqs_[it->second];
      const int32_t len = static_cast<int32_t>(seq->tokens.size());
      const int32_t* st = seq->tokens.data();
      const int32_t lim = std::min(max_m, len);
      while (tail < lim && st[len - 1 - tail] == ctx[n - 1 - static_cast<size_t>(tail)]) ++tail;
    }
  }
  thread_local std::vector<int32_t> nodes_at, idx_at;
  nodes_at.resize(static_cast<size_t>(max_m) + 1);
  idx_at.resize(static_cast<size_t>(max_m) + 1);
  int32_t longest = 0;
  for (int32_t m = 1; m <= max_m; ++m) {
    if (m <= tail) {
      const int32_t node = seq->ep_node[seq->tokens.size() - static_cast<size_t>(m)];
      nodes_at[m] = node;
      idx_at[m] = nodes_[node].length;
    } else if (!match_from_root(ctx, n, m, &nodes_at[m], &idx_at[m])) {
      break;
    }
    longest = m;
  }
  // Longest first: a shorter match must score strictly higher, and it cannot score more than it may draft.
  for (int32_t m = longest; m >= 1; --m) {
    int32_t max_tokens =
        std::min(p.max_spec_tokens, static_cast<int32_t>(m * p.max_spec_factor + p.max_spec_offset + 1e-6));
    max_tokens = std::max(max_tokens, 0);
    if (m < longest) {
      if (static_cast<float>(max_tokens) <= best.score) {
        if (p.max_spec_factor >= 0.0f) break;  // max_tokens only shrinks with m
        continue;
      }
      if (static_cast<float>(max_depth_ - m) <= best.score) continue;  // paths end at depth max_depth
    }
    const float score = path_score(nodes_at[m], idx_at[m], max_tokens, p.min_token_prob);
    if (m == longest || score > best.score) {
      best.node = nodes_at[m];
      best.idx = idx_at[m];
      best.match_len = m;
      best.max_tokens = max_tokens;
      best.score = score;
    }
  }
  return best;
}

int32_t SuffixTree::write_draft(const Match& m, float min_prob, int32_t* out_tokens, float* out_probs) const {
  if (m.node < 0) return 0;
  float prob = 1.0f;
  int32_t n = 0;
  int32_t idx = m.idx;
  const Node* nd = &nodes_[m.node];
  const int32_t* ref = ref_ptr(*nd);
  while (n < m.max_tokens && prob >= min_prob) {
    if (idx < nd->length) {
      out_tokens[n] = ref[idx];
      out_probs[n] = prob;
      ++n;
      ++idx;
    } else {
      if (nd->head_child < 0) break;
      const Node* c = &nodes_[nd->head_child];
      prob *= static_cast<float>(c->count) / static_cast<float>(nd->count);
      nd = c;
      ref = ref_ptr(*nd);
      idx = 0;
    }
  }
  return n;
}

Draft SuffixTree::speculate(const int32_t* ctx, size_t n, const SpecParams& p) const {
  const Match m = best_match(ctx, n, p);
  Draft d;
  d.match_len = m.match_len;
  d.score = m.score;
  d.token_ids.resize(static_cast<size_t>(m.max_tokens));
  d.probs.resize(static_cast<size_t>(m.max_tokens));
  const int32_t k = write_draft(m, p.min_token_prob, d.token_ids.data(), d.probs.data());
  d.token_ids.resize(static_cast<size_t>(k));
  d.probs.resize(static_cast<size_t>(k));
  d.parents.resize(static_cast<size_t>(k));
  for (int32_t i = 0; i < k; ++i) d.parents[static_cast<size_t>(i)] = i - 1;
  return d;
}

// ---------------------------------------------------------------------------------------------------------------
// Diagnostics

#define CHECK_OR_RETURN(cond)                                                                              \
  do {                                                                                                     \
    if (!(cond)) return "integrity check failed at suffix_tree.cc:" + std::to_string(__LINE__) + ": " #cond; \
  } while (0)

std::string SuffixTree::check_node(int32_t n) const {
  const Node& nd = nodes_[n];
  int64_t child_sum = 0;
  int32_t listed = 0;
  int32_t prev = -1;
  for (int32_t c = nd.head_child; c >= 0; c = nodes_[c].next_sibling) {
    const Node& cn = nodes_[c];
    ++listed;
    CHECK_OR_RETURN(listed <= nd.num_children);
    CHECK_OR_RETURN(cn.parent == n);
    CHECK_OR_RETURN(find_child(n, cn.token) == c);
    if (nd.num_children > kSmallNode) {
      CHECK_OR_RETURN(children_.find(n, cn.token) == c);
    } else {
      for (int32_t o = nd.head_child; o >= 0; o = nodes_[o].next_sibling) {
        CHECK_OR_RETURN(o == c || nodes_[o].token != cn.token);
      }
    }
    CHECK_OR_RETURN(cn.prev_sibling == prev);
    CHECK_OR_RETURN(cn.group >= 0 && groups_[cn.group].members > 0);
    child_sum += cn.count;
    if (n != kRoot) CHECK_OR_RETURN(cn.count < nd.count);
    if (prev >= 0) {
      const Node& pn = nodes_[prev];
      CHECK_OR_RETURN(cn.count <= pn.count);
      if (cn.count == pn.count) {
        CHECK_OR_RETURN(cn.group == pn.group);
      } else {
        CHECK_OR_RETURN(cn.group != pn.group);
        CHECK_OR_RETURN(groups_[cn.group].head == c);
        CHECK_OR_RETURN(groups_[cn.group].prev == pn.group);
        CHECK_OR_RETURN(groups_[pn.group].next == cn.group);
      }
    } else {
      CHECK_OR_RETURN(groups_[cn.group].head == c);
      CHECK_OR_RETURN(groups_[cn.group].prev == -1);
    }
    prev = c;
  }
  CHECK_OR_RETURN(listed == nd.num_children);
  CHECK_OR_RETURN(nd.tail_child == prev);
  if (prev >= 0) CHECK_OR_RETURN(groups_[nodes_[prev].group].next == -1);
  CHECK_OR_RETURN(child_sum <= nd.count);
  if (n == kRoot) {
    CHECK_OR_RETURN(nd.parent == -1 && nd.length == 0 && nd.ep_head == -1 && nd.count >= 0);
    return "";
  }
  CHECK_OR_RETURN(nd.length > 0 && nd.count > 0);
  CHECK_OR_RETURN(nd.ref_seq >= 0 && static_cast<size_t>(nd.ref_seq) < seqs_.size());
  CHECK_OR_RETURN(seqs_[nd.ref_seq].id >= 0);
  CHECK_OR_RETURN(nd.ref_idx >= 0);
  CHECK_OR_RETURN(static_cast<size_t>(nd.ref_idx + nd.length) <= seqs_[nd.ref_seq].tokens.size());
  CHECK_OR_RETURN(nd.token == seqs_[nd.ref_seq].tokens[nd.ref_idx]);
  // The reference is an occurrence of the whole path, not only of the node's own tokens.
  int32_t idx = nd.ref_idx;
  for (int32_t a = nd.parent; a != kRoot; a = nodes_[a].parent) {
    const Node& an = nodes_[a];
    idx -= an.length;
    CHECK_OR_RETURN(idx >= 0);
    for (int32_t i = 0; i < an.length; ++i) {
      CHECK_OR_RETURN(seqs_[nd.ref_seq].tokens[idx + i] == seqs_[an.ref_seq].tokens[an.ref_idx + i]);
    }
  }
  for (int64_t rec = nd.ep_head; rec >= 0; rec = seqs_[rec_slot(rec)].ep_next[rec_start(rec)]) {
    CHECK_OR_RETURN(seqs_[rec_slot(rec)].ep_node[rec_start(rec)] == n);
  }
  return "";
}

std::string SuffixTree::check_integrity() const {
  // 1. Structure of every reachable node.
  std::vector<int32_t> stack{kRoot};
  std::vector<int32_t> group_members(groups_.size(), 0);
  int32_t reachable = 0;
  size_t mapped = 0;
  while (!stack.empty()) {
    const int32_t n = stack.back();
    stack.pop_back();
    ++reachable;
    std::string err = check_node(n);
    if (!err.empty()) return err;
    if (nodes_[n].group >= 0) ++group_members[nodes_[n].group];
    if (nodes_[n].num_children > kSmallNode) mapped += static_cast<size_t>(nodes_[n].num_children);
    for (int32_t c = nodes_[n].head_child; c >= 0; c = nodes_[c].next_sibling) stack.push_back(c);
  }
  CHECK_OR_RETURN(reachable == num_nodes_);
  CHECK_OR_RETURN(children_.size() == mapped);
  for (size_t g = 0; g < groups_.size(); ++g) {
    if (group_members[g] > 0) CHECK_OR_RETURN(groups_[g].members == group_members[g]);
  }
  // 2. Every truncated suffix of every sequence is a path that ends at a node boundary, at its endpoint node,
  //    and node counts equal the number of suffixes through them.
  std::vector<int64_t> visits(nodes_.size(), 0);
  int64_t total = 0;
  int64_t linked = 0;
  for (const auto& [seq_id, slot] : seq_slot_) {
    const Seq& s = seqs_[slot];
    CHECK_OR_RETURN(s.id == seq_id);
    CHECK_OR_RETURN(s.ep_node.size() == s.tokens.size());
    CHECK_OR_RETURN(seq_data_[slot] == s.tokens.data());
    const int32_t len = static_cast<int32_t>(s.tokens.size());
    total += len;
    for (int32_t start = 0; start < len; ++start) {
      const int32_t end = std::min(start + max_depth_, len);
      int32_t node = kRoot;
      ++visits[kRoot];
      int32_t idx = start;
      while (idx < end) {
        const int32_t c = find_child(node, s.tokens[idx]);
        CHECK_OR_RETURN(c >= 0);
        node = c;
        ++visits[node];
        CHECK_OR_RETURN(idx + nodes_[node].length <= end);
        const int32_t* ref = ref_ptr(nodes_[node]);
        for (int32_t i = 0; i < nodes_[node].length; ++i) CHECK_OR_RETURN(ref[i] == s.tokens[idx + i]);
        idx += nodes_[node].length;
      }
      CHECK_OR_RETURN(s.ep_node[start] == node);
      if (removable_) {
        bool found = false;
        for (int64_t rec = nodes_[node].ep_head; rec >= 0; rec = seqs_[rec_slot(rec)].ep_next[rec_start(rec)]) {
          if (rec == rec_of(slot, start)) found = true;
        }
        CHECK_OR_RETURN(found);
        ++linked;
      }
    }
  }
  CHECK_OR_RETURN(total == num_tokens_);
  CHECK_OR_RETURN(nodes_[kRoot].count == num_tokens_);
  stack.push_back(kRoot);
  while (!stack.empty()) {
    const int32_t n = stack.back();
    stack.pop_back();
    CHECK_OR_RETURN(visits[n] == nodes_[n].count);
    for (int32_t c = nodes_[n].head_child; c >= 0; c = nodes_[c].next_sibling) stack.push_back(c);
  }
  return "";
}

size_t SuffixTree::estimate_memory() const {
  size_t total = sizeof(*this);
  total += nodes_.capacity() * sizeof(Node) + free_nodes_.capacity() * sizeof(int32_t);
  total += groups_.capacity() * sizeof(Group) + free_groups_.capacity() * sizeof(int32_t);
  total += children_.memory_bytes();
  total += seqs_.capacity() * sizeof(Seq) + free_slots_.capacity() * sizeof(int32_t);
  for (const Seq& s : seqs_) {
    total += s.tokens.capacity() * sizeof(int32_t) + s.ep_node.capacity() * sizeof(int32_t);
    total += (s.ep_next.capacity() + s.ep_prev.capacity()) * sizeof(int64_t);
  }
  total += seq_slot_.size() * (sizeof(std::pair<int32_t, int32_t>) + 2 * sizeof(void*)) +
           seq_slot_.bucket_count() * sizeof(void*);
  return total;
}

}  // namespace arctic_suffix
