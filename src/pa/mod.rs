//! The public-address side of broadcasting (应急广播): the configured outputs and zones (`[pa]`)
//! and speech synthesis. The `broadcast` domain decides what plays where; this module is how.

pub mod audio;
pub mod command;
pub mod config;
pub mod outputs;
pub mod speech;
