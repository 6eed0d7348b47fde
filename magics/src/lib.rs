//! The `%%ranch` magic, independent of Jupyter: parse the magic line, turn a notebook
//! session and a cell into a rank program, build it once, launch N ranks, supervise them
//! and merge what they report.

pub mod args;
pub mod diagnostic;
pub mod source;
pub mod program;
pub mod build;
pub mod launch;
pub mod supervise;
pub mod merge;
pub mod gpus;
pub mod group;
