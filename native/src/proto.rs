//! The protocol's messages, generated from proto/ by build.rs (never edited by hand).
#![allow(clippy::all, clippy::pedantic, missing_docs)]
include!(concat!(env!("OUT_DIR"), "/inference.rs"));
