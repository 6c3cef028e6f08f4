//! hitl-orchestrator: a durable human-in-the-loop orchestration service.
//!
//! The binary in `main.rs` only parses the command line and hands over to [`app`];
//! everything else lives here so that tests drive the same code the binary runs.

pub mod api;
pub mod app;
pub mod cli;
pub mod config;
pub mod console;
pub mod db;
pub mod domain;
pub mod engine;
pub mod identity;
pub mod jobs;
pub mod persistence;
pub mod service;
pub mod telemetry;
pub mod tls;

#[cfg(test)]
mod layering;
