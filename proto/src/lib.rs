//! twtr's wire contracts, generated from the `.proto` files beside this crate.
//!
//! Layout: one module per protobuf package, `twtr.<service>.v1` for each service's gRPC API
//! and `twtr.events.v1` for the domain events every service publishes. Nothing here is written
//! by hand except this file; the build script compiles the protos without a system `protoc`.
//!
//! 64-bit IDs travel as `uint64` (protobuf's JSON mapping, and so `grpcurl`, shows them as
//! strings); an absent optional cursor is `None`.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

pub mod admin {
    pub mod v1 {
        tonic::include_proto!("twtr.admin.v1");
    }
}

pub mod users {
    pub mod v1 {
        tonic::include_proto!("twtr.users.v1");

        // Hand-written `Debug` for the messages that carry secrets (see build.rs): everything
        // but the secret.
        const REDACTED: &str = "[redacted]";

        impl std::fmt::Debug for CreateUserRequest {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct("CreateUserRequest")
                    .field("username", &self.username)
                    .field("password", &REDACTED)
                    .field("display_name", &self.display_name)
                    .field("bio", &self.bio)
                    .finish()
            }
        }

        impl std::fmt::Debug for LoginRequest {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct("LoginRequest")
                    .field("username", &self.username)
                    .field("password", &REDACTED)
                    .finish()
            }
        }

        impl std::fmt::Debug for LoginResponse {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct("LoginResponse")
                    .field("token", &REDACTED)
                    .field("expires_at", &self.expires_at)
                    .field("user", &self.user)
                    .finish()
            }
        }

        impl std::fmt::Debug for UpdateUserRequest {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                let secret = |value: &Option<String>| value.as_ref().map(|_| REDACTED);
                f.debug_struct("UpdateUserRequest")
                    .field("user_id", &self.user_id)
                    .field("display_name", &self.display_name)
                    .field("bio", &self.bio)
                    .field("password", &secret(&self.password))
                    .field("current_password", &secret(&self.current_password))
                    .finish()
            }
        }
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

#[cfg(test)]
mod tests {
    use super::users::v1::{CreateUserRequest, LoginRequest, LoginResponse, UpdateUserRequest};

    #[test]
    fn secrets_never_show_in_debug_output() {
        let printed = [
            format!(
                "{:?}",
                CreateUserRequest {
                    username: "alice".into(),
                    password: "hunter2-secret".into(),
                    ..Default::default()
                }
            ),
            format!(
                "{:?}",
                LoginRequest {
                    username: "alice".into(),
                    password: "hunter2-secret".into(),
                }
            ),
            format!(
                "{:?}",
                LoginResponse {
                    token: "hunter2-secret".into(),
                    ..Default::default()
                }
            ),
            format!(
                "{:?}",
                UpdateUserRequest {
                    password: Some("hunter2-secret".into()),
                    current_password: Some("hunter2-secret".into()),
                    ..Default::default()
                }
            ),
        ];
        for line in printed {
            assert!(!line.contains("hunter2"), "{line}");
            assert!(line.contains("[redacted]"), "{line}");
        }
    }
}
