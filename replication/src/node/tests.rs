//! Unit tests of the node's state machine: one node driven by hand, its actions checked.
