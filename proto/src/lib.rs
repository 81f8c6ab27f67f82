//! twtr's wire contracts, generated from the `.proto` files beside this crate.
//!
//! Layout: one module per protobuf package, `twtr.<service>.v1` for each service's gRPC API
//! and `twtr.events.v1` for the domain events every service publishes. Nothing here is written
//! by hand except this file; the build script compiles the protos without a system `protoc`.
//!
//! 64-bit IDs travel as `uint64` (protobuf's JSON mapping, and so `grpcurl`, shows them as
//! strings); an absent optional cursor is `None`.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

pub mod users {
    pub mod v1 {
        tonic::include_proto!("twtr.users.v1");
    }
}

pub mod tweets {
    pub mod v1 {
        tonic::include_proto!("twtr.tweets.v1");
    }
}

pub mod followers {
    pub mod v1 {
        tonic::include_proto!("twtr.followers.v1");
    }
}

pub mod feeds {
    pub mod v1 {
        tonic::include_proto!("twtr.feeds.v1");
    }
}

pub mod events {
    pub mod v1 {
        tonic::include_proto!("twtr.events.v1");
    }
}

/// The encoded `FileDescriptorSet` of every twtr package, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("twtr_descriptor");
