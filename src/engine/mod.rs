//! Plan execution: the plans runs follow, and (as it grows) advancing a run node by
//! node, pausing at HITL nodes and calling agents.

pub mod plan;
