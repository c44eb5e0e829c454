// A minimal intrusive doubly-linked list: O(1) unlink from the node alone, no allocation.
#pragma once

namespace aiorpc::core {

struct ListNode {
  ListNode* prev = this;
  ListNode* next = this;

  ListNode() = default;
  ListNode(const ListNode&) = delete;
  ListNode& operator=(const ListNode&) = delete;
  ~ListNode() { unlink(); }

  bool linked() const noexcept { return next != this; }
  void unlink() noexcept {
    prev->next = next;
    next->prev = prev;
    prev = next = this;
  }
  // Inserts `n` before this node (at the tail when this is the list head).
  void pushBack(ListNode* n) noexcept {
    n->unlink();
    n->prev = prev;
    n->next = this;
    prev->next = n;
    prev = n;
  }
  bool empty() const noexcept { return !linked(); }
  ListNode* front() const noexcept { return next; }
};

}  // namespace aiorpc::core
