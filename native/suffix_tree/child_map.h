// Open-addressing hash map (parent node, token) -> child node, one per tree.
//
// One flat table for the whole tree instead of one small map per node: a child lookup is one multiply, one
// probe (usually) and no pointer chasing through per-node allocations. Linear probing with backward-shift
// deletion, so there are no tombstones and lookups never degrade after many removals.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace arctic_suffix {

class ChildMap {
 public:
  ChildMap() { rehash(16); }

  int32_t find(int32_t parent, int32_t token) const {
    const uint64_t key = pack(parent, token);
    size_t i = slot_of(key);
    for (;;) {
      const Slot& s = slots_[i];
      if (s.child < 0) return -1;
      if (s.key == key) return s.child;
      i = (i + 1) & mask_;
    }
  }

  // Inserts or overwrites.
  void set(int32_t parent, int32_t token, int32_t child) {
    if ((size_ + 1) * 2 > slots_.size()) rehash(slots_.size() * 2);
    const uint64_t key = pack(parent, token);
    size_t i = slot_of(key);
    for (;;) {
      Slot& s = slots_[i];
      if (s.child < 0) {
        s.key = key;
        s.child = child;
        ++size_;
        return;
      }
      if (s.key == key) {
        s.child = child;
        return;
      }
      i = (i + 1) & mask_;
    }
  }

  // Removes the key if present (backward-shift deletion keeps probe chains intact).
  void erase(int32_t parent, int32_t token) {
    const uint64_t key = pack(parent, token);
    size_t i = slot_of(key);
    for (;;) {
      if (slots_[i].child < 0) return;
      if (slots_[i].key == key) break;
      i = (i + 1) & mask_;
    }
    size_t hole = i;
    size_t j = i;
    for (;;) {
      j = (j + 1) & mask_;
      if (slots_[j].child < 0) break;
      const size_t home = slot_of(slots_[j].key);
      // Move slots_[j] into the hole if its home is not cyclically in (hole, j].
      const bool home_in_range = hole <= j ? (home > hole && home <= j) : (home > hole || home <= j);
      if (!home_in_range) {
        slots_[hole] = slots_[j];
        hole = j;
      }
    }
    slots_[hole].child = -1;
    --size_;
  }

  size_t size() const { return size_; }
  size_t memory_bytes() const { return slots_.capacity() * sizeof(Slot); }

 private:
  struct Slot {
    uint64_t key = 0;
    int32_t child = -1;
  };

  static uint64_t pack(int32_t parent, int32_t token) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(parent)) << 32) | static_cast<uint32_t>(token);
  }

  size_t slot_of(uint64_t key) const {
    uint64_t h = key * 0x9E3779B97F4A7C15ULL;
    h ^= h >> 29;
    return static_cast<size_t>(h >> shift_) & mask_;
  }

  void rehash(size_t capacity) {
    std::vector<Slot> old;
    old.swap(slots_);
    slots_.assign(capacity, Slot{});
    mask_ = capacity - 1;
    int bits = 0;
    while ((size_t{1} << bits) < capacity) ++bits;
    shift_ = 64 - bits;
    size_ = 0;
    for (const Slot& s : old) {
      if (s.child >= 0) {
        size_t i = slot_of(s.key);
        while (slots_[i].child >= 0) i = (i + 1) & mask_;
        slots_[i] = s;
        ++size_;
      }
    }
  }

  std::vector<Slot> slots_;
  size_t mask_ = 0;
  int shift_ = 60;
  size_t size_ = 0;
};

}  // namespace arctic_suffix
