//! The users domain: each operation validates, then stores, then answers.

use std::sync::Arc;

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use twtr_common::store::StoreError;
use twtr_common::tokens::{IssuedToken, TokenError, Tokens};
use twtr_common::{ErrorCode, IdGenerator, ServiceError, clock, events};
use twtr_proto::events::v1::UserCreated;
use twtr_proto::events::v1::envelope::Payload;

use crate::domain::{Bio, DisplayName, InvalidInput, Password, Username};
use crate::store::{Created, UserRecord, UserStore};

/// The most IDs one batch lookup may ask for.
pub const MAX_BATCH: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    #[error("username is already taken")]
    UsernameTaken,
    #[error("wrong username or password")]
    WrongCredentials,
    #[error("user not found")]
    NotFound,
    #[error("at most {MAX_BATCH} IDs per batch")]
    BatchTooLarge,
    #[error("storage failed")]
    Store(#[from] StoreError),
    #[error("password hashing failed: {0}")]
    Hashing(String),
    #[error("token signing failed")]
    Token(#[from] TokenError),
}

impl ServiceError for UsersError {
    fn error_code(&self) -> ErrorCode {
        match self {
            Self::Invalid(_) | Self::BatchTooLarge => ErrorCode::InvalidArgument,
            Self::UsernameTaken => ErrorCode::AlreadyExists,
            Self::WrongCredentials => ErrorCode::Unauthenticated,
            Self::NotFound => ErrorCode::NotFound,
            Self::Store(_) | Self::Hashing(_) | Self::Token(_) => ErrorCode::Internal,
        }
    }
}

/// A sign-up request, as received.
#[derive(Debug, Clone)]
pub struct SignUp {
    pub username: String,
    pub password: String,
    pub display_name: String,
    pub bio: String,
}

/// A successful login.
#[derive(Debug, Clone)]
pub struct Session {
    pub token: IssuedToken,
    pub user: UserRecord,
}

pub struct Users {
    store: Arc<dyn UserStore>,
    ids: Arc<IdGenerator>,
    tokens: Tokens,
    /// A real hash of a random password, verified against when the username is unknown so a
    /// failed login takes the same time whether or not the account exists.
    decoy_hash: String,
}

impl Users {
    /// Fails only if the password hasher cannot run at all.
    pub fn new(
        store: Arc<dyn UserStore>,
        ids: Arc<IdGenerator>,
        tokens: Tokens,
    ) -> Result<Self, UsersError> {
        let decoy_hash = hash_password("decoy password, never matches".to_owned())?;
        Ok(Self {
            store,
            ids,
            tokens,
            decoy_hash,
        })
    }

    pub async fn create_user(&self, request: SignUp) -> Result<UserRecord, UsersError> {
        let username = Username::parse(&request.username)?;
        let password = Password::parse(&request.password)?;
        let display_name = DisplayName::parse(&request.display_name)?.or_username(&username);
        let bio = Bio::parse(&request.bio)?.into_inner();

        let password_hash = hash_password_off_thread(password).await?;
        let id = self.ids.next_id();
        let user = UserRecord {
            id,
            username: username.as_str().to_owned(),
            display_name: display_name.clone(),
            bio,
            password_hash,
            created_at_ms: clock::now_millis(),
        };
        let event = events::envelope(
            self.ids.next_id(),
            id,
            Payload::UserCreated(UserCreated {
                user_id: id,
                username: user.username.clone(),
                display_name,
            }),
        );
        match self.store.create(user.clone(), event).await? {
            Created::Created => {
                tracing::info!(user_id = id, "user created");
                Ok(user)
            }
            Created::UsernameTaken => Err(UsersError::UsernameTaken),
        }
    }

    pub async fn login(&self, username: &str, password: &str) -> Result<Session, UsersError> {
        let user = match Username::parse(username) {
            Ok(username) => self.store.get_by_username(&username.canonical()).await?,
            Err(_) => None,
        };
        let hash = user
            .as_ref()
            .map_or_else(|| self.decoy_hash.clone(), |u| u.password_hash.clone());
        let matches = verify_password_off_thread(password.to_owned(), hash).await?;
        match user {
            Some(user) if matches => Ok(Session {
                token: self.tokens.issue(user.id)?,
                user,
            }),
            _ => Err(UsersError::WrongCredentials),
        }
    }

    pub async fn get_user(&self, id: u64) -> Result<UserRecord, UsersError> {
        self.store.get(id).await?.ok_or(UsersError::NotFound)
    }

    pub async fn get_user_by_username(&self, username: &str) -> Result<UserRecord, UsersError> {
        // A name that breaks the rules cannot belong to anyone.
        let username = Username::parse(username).map_err(|_| UsersError::NotFound)?;
        self.store
            .get_by_username(&username.canonical())
            .await?
            .ok_or(UsersError::NotFound)
    }

    pub async fn batch_get_users(&self, ids: Vec<u64>) -> Result<Vec<UserRecord>, UsersError> {
        if ids.len() > MAX_BATCH {
            return Err(UsersError::BatchTooLarge);
        }
        let mut ids = ids;
        ids.sort_unstable();
        ids.dedup();
        Ok(self.store.get_many(ids).await?)
    }
}

fn hash_password(password: String) -> Result<String, UsersError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|err| UsersError::Hashing(err.to_string()))
}

/// Argon2 is deliberately slow; keep it off the async workers.
async fn hash_password_off_thread(password: Password) -> Result<String, UsersError> {
    let password = password.expose().to_owned();
    tokio::task::spawn_blocking(move || hash_password(password))
        .await
        .map_err(|err| UsersError::Hashing(err.to_string()))?
}

async fn verify_password_off_thread(password: String, hash: String) -> Result<bool, UsersError> {
    tokio::task::spawn_blocking(move || {
        let parsed =
            PasswordHash::new(&hash).map_err(|err| UsersError::Hashing(err.to_string()))?;
        Ok(Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok())
    })
    .await
    .map_err(|err| UsersError::Hashing(err.to_string()))?
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use twtr_common::tokens::TokenSecret;

    use super::*;
    use crate::store::EmbeddedUserStore;

    fn users(dir: &std::path::Path) -> (Users, Tokens) {
        let store = Arc::new(EmbeddedUserStore::open(&dir.join("users.redb")).unwrap());
        let secret = TokenSecret::new("0123456789abcdef0123456789abcdef").unwrap();
        let tokens = Tokens::new(&secret, Duration::from_secs(60));
        (
            Users::new(
                store,
                Arc::new(IdGenerator::new(1).unwrap()),
                tokens.clone(),
            )
            .unwrap(),
            tokens,
        )
    }

    fn sign_up(username: &str, password: &str) -> SignUp {
        SignUp {
            username: username.into(),
            password: password.into(),
            display_name: String::new(),
            bio: String::new(),
        }
    }

    #[tokio::test]
    async fn sign_up_then_log_in_yields_a_token_for_that_user() {
        let dir = tempfile::tempdir().unwrap();
        let (users, tokens) = users(dir.path());
        let created = users
            .create_user(sign_up("Ada", "correct horse"))
            .await
            .unwrap();
        assert_eq!(created.display_name, "Ada");
        assert_ne!(created.password_hash, "correct horse");
        let session = users.login("ada", "correct horse").await.unwrap();
        assert_eq!(session.user.id, created.id);
        assert_eq!(tokens.verify(&session.token.token), Ok(created.id));
    }

    #[tokio::test]
    async fn wrong_password_and_unknown_user_fail_alike() {
        let dir = tempfile::tempdir().unwrap();
        let (users, _) = users(dir.path());
        users
            .create_user(sign_up("Ada", "correct horse"))
            .await
            .unwrap();
        for (name, password) in [
            ("Ada", "wrong horse"),
            ("nobody", "correct horse"),
            ("x", "y"),
        ] {
            let err = users.login(name, password).await.unwrap_err();
            assert!(
                matches!(err, UsersError::WrongCredentials),
                "{name}: {err:?}"
            );
        }
    }

    #[tokio::test]
    async fn bad_input_is_refused_before_anything_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let (users, _) = users(dir.path());
        let err = users
            .create_user(sign_up("ok_name", "short"))
            .await
            .unwrap_err();
        assert_eq!(err.error_code(), ErrorCode::InvalidArgument);
        assert!(err.to_string().contains("password"));
        assert!(matches!(
            users.get_user_by_username("ok_name").await,
            Err(UsersError::NotFound)
        ));
    }

    #[tokio::test]
    async fn a_taken_username_is_a_conflict() {
        let dir = tempfile::tempdir().unwrap();
        let (users, _) = users(dir.path());
        users
            .create_user(sign_up("Ada", "correct horse"))
            .await
            .unwrap();
        let err = users
            .create_user(sign_up("ADA", "another one"))
            .await
            .unwrap_err();
        assert_eq!(err.error_code(), ErrorCode::AlreadyExists);
    }
}
