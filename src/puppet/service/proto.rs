//! Code generated at build time from `proto/` (see `build.rs`).

#![allow(clippy::all, clippy::pedantic, missing_docs)]

pub mod wechaty {
    tonic::include_proto!("wechaty");

    pub mod puppet {
        tonic::include_proto!("wechaty.puppet");
    }
}

pub use wechaty::puppet::*;
pub use wechaty::puppet_client::PuppetClient;
