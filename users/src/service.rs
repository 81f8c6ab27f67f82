//! The users domain: each operation validates, then stores, then answers.

use std::collections::HashSet;
use std::sync::Arc;

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use futures_util::future::join_all;
use twtr_common::store::StoreError;
use twtr_common::tokens::{IssuedToken, TokenError, TokenSigner, Verified};
use twtr_common::{ErrorCode, IdGenerator, ServiceError, clock, events};
use twtr_proto::events::v1::envelope::Payload;
use twtr_proto::events::v1::{UserCreated, UserDeleted, UserUpdated};

use crate::domain::{Bio, DisplayName, InvalidInput, Password, Username};
use crate::search::{MatchKind, PREFIX_CANDIDATES, PeopleQuery, WORD_CANDIDATES, name_words};
use crate::store::{Created, ProfileChanges, Updated, UserRecord, UserStore};

/// The most IDs one batch lookup may ask for (shared with every caller).
pub use twtr_common::page::MAX_BATCH;

#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    #[error("username is already taken")]
    UsernameTaken,
    #[error("wrong username or password")]
    WrongCredentials,
    #[error("the current password is wrong")]
    WrongCurrentPassword,
    #[error("current_password is required to change the password")]
    CurrentPasswordRequired,
    #[error("this token was revoked (the password changed); log in again")]
    TokenRevoked,
    #[error("too many logins and sign-ups at once; try again shortly")]
    Overloaded,
    #[error("user not found")]
    NotFound,
    #[error("at most {MAX_BATCH} IDs per batch")]
    BatchTooLarge,
    #[error("at most {MAX_USERNAMES} usernames per batch")]
    TooManyUsernames,
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
            Self::Invalid(_)
            | Self::BatchTooLarge
            | Self::TooManyUsernames
            | Self::CurrentPasswordRequired => ErrorCode::InvalidArgument,
            Self::UsernameTaken => ErrorCode::AlreadyExists,
            Self::WrongCredentials | Self::WrongCurrentPassword | Self::TokenRevoked => {
                ErrorCode::Unauthenticated
            }
            Self::Overloaded => ErrorCode::Unavailable,
            Self::NotFound => ErrorCode::NotFound,
            Self::Store(err) => err.error_code(),
            Self::Hashing(_) | Self::Token(_) => ErrorCode::Internal,
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

/// A profile change, as received; `None` leaves a field as it is.
#[derive(Clone, Default)]
pub struct ProfileUpdate {
    pub display_name: Option<String>,
    pub bio: Option<String>,
    pub password: Option<String>,
    pub current_password: Option<String>,
}

impl std::fmt::Debug for ProfileUpdate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secret = |value: &Option<String>| value.as_ref().map(|_| "[redacted]");
        f.debug_struct("ProfileUpdate")
            .field("display_name", &self.display_name)
            .field("bio", &self.bio)
            .field("password", &secret(&self.password))
            .field("current_password", &secret(&self.current_password))
            .finish()
    }
}

/// Whether an account can use its tokens, as verifiers see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenState {
    pub user_id: u64,
    /// False for a deleted or unknown account.
    pub active: bool,
    /// Tokens with a lower generation were revoked.
    pub generation: u64,
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
    tokens: TokenSigner,
    /// Bounds the password hashes computed at once (each takes ~19 MiB and a core for a while),
    /// so a burst of logins cannot exhaust memory.
    hashing: Hashing,
    /// A real hash of a random password, verified against when the username is unknown so a
    /// failed login takes the same time whether or not the account exists.
    decoy_hash: String,
}

impl Users {
    /// Whether this service's store answers (readiness, and its consumer's probe).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.store.ping().await
    }

    /// Fails only if the password hasher cannot run at all.
    pub fn new(
        store: Arc<dyn UserStore>,
        ids: Arc<IdGenerator>,
        tokens: TokenSigner,
    ) -> Result<Self, UsersError> {
        let decoy_hash = hash_password("decoy password, never matches".to_owned())?;
        Ok(Self {
            store,
            ids,
            tokens,
            hashing: Hashing::default(),
            decoy_hash,
        })
    }

    pub async fn create_user(&self, request: SignUp) -> Result<UserRecord, UsersError> {
        let username = Username::parse(&request.username)?;
        let password = Password::parse(&request.password)?;
        let display_name = DisplayName::parse(&request.display_name)?.or_username(&username);
        let bio = Bio::parse(&request.bio)?.into_inner();

        let password_hash = self.hashing.hash(password).await?;
        let id = self.ids.next_id();
        let now = clock::now_millis();
        let user = UserRecord {
            id,
            username: username.as_str().to_owned(),
            display_name: display_name.clone(),
            bio,
            password_hash,
            created_at_ms: now,
            token_generation: 0,
            updated_at_ms: now,
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
        let matches = self.hashing.verify(password.to_owned(), hash).await?;
        match user {
            Some(user) if matches => Ok(Session {
                token: self.tokens.issue(user.id, user.token_generation)?,
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

    /// Changes the profile of the user of `token`, a verified token whose generation is checked
    /// here (see [`Users::acting_user`]). A new password needs the current one, and raises the
    /// token generation so every token issued before stops working.
    pub async fn update_user(
        &self,
        token: Verified,
        update: ProfileUpdate,
    ) -> Result<UserRecord, UsersError> {
        let user_id = token.user_id;
        let display_name = update
            .display_name
            .as_deref()
            .map(DisplayName::parse)
            .transpose()?;
        let bio = update
            .bio
            .as_deref()
            .map(Bio::parse)
            .transpose()?
            .map(Bio::into_inner);
        let new_password = update
            .password
            .as_deref()
            .map(Password::parse)
            .transpose()?;
        let user = self.acting_user(token).await?;
        let display_name = display_name.map(|name| name.or(&user.username));
        let password = match new_password {
            None => None,
            Some(password) => {
                let current = update
                    .current_password
                    .ok_or(UsersError::CurrentPasswordRequired)?;
                let matches = self
                    .hashing
                    .verify(current, user.password_hash.clone())
                    .await?;
                if !matches {
                    return Err(UsersError::WrongCurrentPassword);
                }
                // A generation from the ID clock is higher than any issued before it.
                Some((self.hashing.hash(password).await?, self.ids.next_id()))
            }
        };
        let changes = ProfileChanges {
            display_name: display_name.clone(),
            bio: bio.clone(),
            password,
            updated_at_ms: clock::now_millis(),
            acting_generation: token.generation,
        };
        let event = events::envelope(
            self.ids.next_id(),
            user_id,
            Payload::UserUpdated(UserUpdated {
                user_id,
                display_name: display_name.unwrap_or_else(|| user.display_name.clone()),
                bio: bio.unwrap_or_else(|| user.bio.clone()),
            }),
        );
        let password_changed = changes.password.is_some();
        match self.store.update(user_id, changes, event).await? {
            Updated::Updated => {}
            Updated::NoSuchUser => return Err(UsersError::NotFound),
            // A password change landed since the check above.
            Updated::Revoked => return Err(UsersError::TokenRevoked),
        }
        tracing::info!(user_id, password_changed, "user updated");
        self.get_user(user_id).await
    }

    /// Deletes the account of the user of `token` (checked as by [`Users::update_user`]).
    pub async fn delete_user(&self, token: Verified) -> Result<(), UsersError> {
        let user_id = token.user_id;
        let user = self.acting_user(token).await?;
        let event = events::envelope(
            self.ids.next_id(),
            user_id,
            Payload::UserDeleted(UserDeleted {
                user_id,
                username: user.username,
            }),
        );
        if !self
            .store
            .delete(user_id, clock::now_millis(), event)
            .await?
        {
            return Err(UsersError::NotFound);
        }
        tracing::info!(user_id, "user deleted");
        Ok(())
    }

    /// The account a verified token acts as, unless the token was revoked: this service owns
    /// the token generation, so it checks it itself rather than trusting the gateway's cache (a
    /// caller that reaches the gRPC port directly skips the gateway). A deleted account is
    /// `NotFound`.
    async fn acting_user(&self, token: Verified) -> Result<UserRecord, UsersError> {
        let user = self.get_user(token.user_id).await?;
        if token.generation < user.token_generation {
            return Err(UsersError::TokenRevoked);
        }
        Ok(user)
    }

    /// For token verifiers: each account's liveness and token generation.
    pub async fn token_states(&self, ids: Vec<u64>) -> Result<Vec<TokenState>, UsersError> {
        let live = self.batch_get_users(ids.clone(), Vec::new()).await?;
        Ok(ids
            .into_iter()
            .map(|user_id| {
                let user = live.iter().find(|u| u.id == user_id);
                TokenState {
                    user_id,
                    active: user.is_some(),
                    generation: user.map_or(0, |u| u.token_generation),
                }
            })
            .collect())
    }

    /// People search (see [`crate::search`]): the matches of `query`, best kind first, each
    /// user once.
    pub async fn search_users(
        &self,
        query: &str,
    ) -> Result<Vec<(UserRecord, MatchKind)>, UsersError> {
        let query = PeopleQuery::parse(query)?;
        let by_name = async {
            match query.prefix() {
                Some(prefix) => {
                    self.store
                        .find_by_username_prefix(prefix, PREFIX_CANDIDATES)
                        .await
                }
                None => Ok(Vec::new()),
            }
        };
        let by_words = async {
            match query.words.first() {
                Some(word) => self.store.find_by_name_word(word, WORD_CANDIDATES).await,
                None => Ok(Vec::new()),
            }
        };
        let (by_name, by_words) = tokio::try_join!(by_name, by_words)?;
        let exact = query.username.as_deref();
        let mut seen = HashSet::new();
        let mut found = Vec::with_capacity(by_name.len() + by_words.len());
        for user in by_name {
            let kind = if Some(user.username.to_ascii_lowercase().as_str()) == exact {
                MatchKind::ExactUsername
            } else {
                MatchKind::UsernamePrefix
            };
            seen.insert(user.id);
            found.push((user, kind));
        }
        for user in by_words {
            let words = name_words(&user.display_name);
            if query.words.iter().all(|word| words.contains(word)) && seen.insert(user.id) {
                found.push((user, MatchKind::DisplayName));
            }
        }
        // Stable: within a kind, the order the store read them in.
        found.sort_by_key(|(_, kind)| *kind);
        Ok(found)
    }

    /// The live accounts among `ids` (at most [`MAX_BATCH`]) and those named by `usernames` (at
    /// most [`MAX_USERNAMES`], ignoring case: a tweet's `@mentions`), each once; unknown IDs and
    /// names, and deleted accounts, are simply absent.
    pub async fn batch_get_users(
        &self,
        ids: Vec<u64>,
        usernames: Vec<String>,
    ) -> Result<Vec<UserRecord>, UsersError> {
        if ids.len() > MAX_BATCH {
            return Err(UsersError::BatchTooLarge);
        }
        if usernames.len() > MAX_USERNAMES {
            return Err(UsersError::TooManyUsernames);
        }
        let mut ids = ids;
        ids.sort_unstable();
        ids.dedup();
        let mut users = if ids.is_empty() {
            Vec::new()
        } else {
            self.store.get_many(ids).await?
        };
        // A name that breaks the rules cannot belong to anyone.
        let mut names: Vec<String> = usernames
            .iter()
            .filter_map(|name| Username::parse(name).ok())
            .map(|name| name.canonical())
            .collect();
        names.sort_unstable();
        names.dedup();
        let named = join_all(names.iter().map(|name| self.store.get_by_username(name))).await;
        for user in named {
            if let Some(user) = user?
                && !users.iter().any(|u| u.id == user.id)
            {
                users.push(user);
            }
        }
        Ok(users)
    }
}

/// Usernames one [`Users::batch_get_users`] resolves: a tweet's mentions.
pub const MAX_USERNAMES: usize = twtr_common::words::MAX_MENTIONS;

fn hash_password(password: String) -> Result<String, UsersError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|err| UsersError::Hashing(err.to_string()))
}

/// Password hashing off the async workers, at most [`Hashing::CONCURRENCY`] at a time; a caller
/// that cannot get a turn within [`Hashing::WAIT`] is told the service is overloaded (503).
struct Hashing {
    permits: tokio::sync::Semaphore,
}

impl Default for Hashing {
    fn default() -> Self {
        Self {
            permits: tokio::sync::Semaphore::new(Self::CONCURRENCY),
        }
    }
}

impl Hashing {
    /// Argon2id with its default parameters needs ~19 MiB a hash: four at once stay under
    /// 80 MiB, and keep two cores busy without starving everything else.
    const CONCURRENCY: usize = 4;
    const WAIT: std::time::Duration = std::time::Duration::from_secs(2);

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, UsersError> + Send + 'static,
    ) -> Result<T, UsersError> {
        let _permit = tokio::time::timeout(Self::WAIT, self.permits.acquire())
            .await
            .map_err(|_| UsersError::Overloaded)?
            .map_err(|_| UsersError::Overloaded)?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|err| UsersError::Hashing(err.to_string()))?
    }

    async fn hash(&self, password: Password) -> Result<String, UsersError> {
        let password = password.expose().to_owned();
        self.run(move || hash_password(password)).await
    }

    async fn verify(&self, password: String, hash: String) -> Result<bool, UsersError> {
        self.run(move || {
            let parsed =
                PasswordHash::new(&hash).map_err(|err| UsersError::Hashing(err.to_string()))?;
            Ok(Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use twtr_common::tokens::{TokenVerifier, generate_key_pair};

    use super::*;
    use crate::store::EmbeddedUserStore;

    fn users(dir: &std::path::Path) -> (Users, TokenVerifier) {
        let store = Arc::new(EmbeddedUserStore::open(&dir.join("users.redb")).unwrap());
        let (private, public) = generate_key_pair().unwrap();
        let signer = TokenSigner::from_pem(&private, Duration::from_secs(60)).unwrap();
        let users = Users::new(store, Arc::new(IdGenerator::new(1).unwrap()), signer).unwrap();
        (users, TokenVerifier::from_pems(&[public]).unwrap())
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
        assert_eq!(
            tokens.verify(&session.token.token).map(|v| v.user_id),
            Ok(created.id)
        );
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

    /// The gateway's revocation cache is not the only check: a caller that reaches this
    /// service directly with a token issued before a password change cannot change or delete
    /// the account.
    #[tokio::test]
    async fn a_token_older_than_the_password_cannot_change_or_delete_the_account() {
        let dir = tempfile::tempdir().unwrap();
        let (users, tokens) = users(dir.path());
        users
            .create_user(sign_up("Ada", "correct horse"))
            .await
            .unwrap();
        let verify = |token: &IssuedToken| tokens.verify(&token.token).unwrap();
        let old = verify(&users.login("ada", "correct horse").await.unwrap().token);
        let change = ProfileUpdate {
            password: Some("battery staple".into()),
            current_password: Some("correct horse".into()),
            ..ProfileUpdate::default()
        };
        users.update_user(old, change).await.unwrap();

        let rename = || ProfileUpdate {
            display_name: Some("Mallory".into()),
            ..ProfileUpdate::default()
        };
        let err = users.update_user(old, rename()).await.unwrap_err();
        assert!(matches!(err, UsersError::TokenRevoked), "{err:?}");
        assert_eq!(err.error_code(), ErrorCode::Unauthenticated);
        let err = users.delete_user(old).await.unwrap_err();
        assert!(matches!(err, UsersError::TokenRevoked), "{err:?}");
        assert_eq!(
            users.get_user(old.user_id).await.unwrap().display_name,
            "Ada"
        );

        // A token issued since works.
        let new = verify(&users.login("ada", "battery staple").await.unwrap().token);
        let renamed = users.update_user(new, rename()).await.unwrap();
        assert_eq!(renamed.display_name, "Mallory");
        users.delete_user(new).await.unwrap();
        let err = users.delete_user(new).await.unwrap_err();
        assert!(matches!(err, UsersError::NotFound), "{err:?}");
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
    async fn users_are_found_by_username_in_batches() {
        let dir = tempfile::tempdir().unwrap();
        let (users, _) = users(dir.path());
        let ada = users
            .create_user(sign_up("Ada", "correct horse"))
            .await
            .unwrap();
        let bob = users
            .create_user(sign_up("bob", "correct horse"))
            .await
            .unwrap();
        let names = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let found = users
            .batch_get_users(vec![bob.id], names(&["ADA", "ada", "nobody", "x", "bob"]))
            .await
            .unwrap();
        let mut ids: Vec<u64> = found.iter().map(|u| u.id).collect();
        ids.sort_unstable();
        assert_eq!(
            ids,
            vec![ada.id, bob.id],
            "each once; unknown and invalid names absent"
        );
        let eleven: Vec<String> = (0..11).map(|i| format!("user{i}")).collect();
        let err = users.batch_get_users(Vec::new(), eleven).await.unwrap_err();
        assert!(matches!(err, UsersError::TooManyUsernames));
        assert_eq!(err.to_string(), "at most 10 usernames per batch");
        assert_eq!(err.error_code(), ErrorCode::InvalidArgument);
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

    /// Time-based, so on paused tokio time: with every hashing permit taken, a caller waits
    /// `Hashing::WAIT` and then hears "overloaded" (a 503), instead of queueing without bound.
    #[tokio::test(start_paused = true)]
    async fn hashing_is_bounded_and_overload_is_unavailable() {
        let hashing = Hashing::default();
        let held = hashing
            .permits
            .acquire_many(Hashing::CONCURRENCY as u32)
            .await
            .unwrap();
        let started = tokio::time::Instant::now();
        let err = hashing
            .verify("password".into(), "$argon2id$not-checked".into())
            .await
            .unwrap_err();
        assert!(matches!(err, UsersError::Overloaded), "{err:?}");
        assert_eq!(err.error_code(), ErrorCode::Unavailable);
        assert!(
            started.elapsed() >= Hashing::WAIT,
            "it waited its turn first"
        );
        drop(held);
        let hash = hashing
            .hash(Password::parse("a-fine-password").unwrap())
            .await
            .unwrap();
        assert!(
            hashing
                .verify("a-fine-password".into(), hash)
                .await
                .unwrap()
        );
    }
}
