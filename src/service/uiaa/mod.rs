//! User-interactive authentication: sessions (in memory, bounded, expiring), the stages Hearth
//! offers (`m.login.password`, `m.login.registration_token`, `m.login.dummy`) and their checks.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use ruma::{
    api::client::uiaa::{AuthData, AuthFlow, AuthType, UiaaInfo, UserIdentifier},
    OwnedUserId, UserId,
};

use super::{ratelimit, registration_tokens, users};
use crate::error::{Error, Result};
use crate::util::random_string;

const SESSION_LIFETIME: Duration = Duration::from_secs(30 * 60);
const MAX_SESSIONS: usize = 10_000;

/// The operation a session authenticates; a session completes only the operation it began with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    Register,
    ChangePassword,
    Deactivate,
    DeleteDevices,
    CrossSigning,
}

struct UiaaSession {
    purpose: Purpose,
    flows: Vec<AuthFlow>,
    completed: Vec<AuthType>,
    /// The account the session authenticates, for endpoints that act on an existing account.
    user: Option<OwnedUserId>,
    registration_token: Option<String>,
    created: Instant,
}

/// What a completed authentication established.
#[derive(Debug, Default)]
pub struct Completed {
    /// The registration token reserved by the flow, to be completed once the account exists.
    pub registration_token: Option<String>,
}

pub struct Service {
    users: Arc<users::Service>,
    registration_tokens: Arc<registration_tokens::Service>,
    ratelimit: Arc<ratelimit::Service>,
    sessions: Mutex<HashMap<String, UiaaSession>>,
}

fn stage_error(message: &str) -> ruma::api::error::StandardErrorBody {
    ruma::api::error::StandardErrorBody::new(
        ruma::api::error::ErrorKind::Forbidden,
        message.to_owned(),
    )
}

impl Service {
    pub fn new(
        users: Arc<users::Service>,
        registration_tokens: Arc<registration_tokens::Service>,
        ratelimit: Arc<ratelimit::Service>,
    ) -> Self {
        Self {
            users,
            registration_tokens,
            ratelimit,
            sessions: Mutex::new(HashMap::new()),
        }
    }

    /// The flows for acting on an existing account: its password.
    pub fn password_flows() -> Vec<AuthFlow> {
        vec![AuthFlow::new(vec![AuthType::Password])]
    }

    fn expire(&self, sessions: &mut HashMap<String, UiaaSession>) {
        let tokens = &self.registration_tokens;
        sessions.retain(|_, s| {
            let live = s.created.elapsed() < SESSION_LIFETIME;
            if !live {
                if let Some(t) = &s.registration_token {
                    tokens.release(t);
                }
            }
            live
        });
    }

    fn new_session(
        &self,
        purpose: Purpose,
        flows: Vec<AuthFlow>,
        user: Option<&UserId>,
    ) -> Result<UiaaInfo> {
        let mut sessions = self.sessions.lock();
        self.expire(&mut sessions);
        if sessions.len() >= MAX_SESSIONS {
            // Evict the oldest rather than refuse: one caller must not lock everyone out.
            if let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.created)
                .map(|(id, _)| id.clone())
            {
                if let Some(s) = sessions.remove(&oldest) {
                    if let Some(t) = s.registration_token {
                        self.registration_tokens.release(&t);
                    }
                }
            }
        }
        let id = random_string(24);
        sessions.insert(
            id.clone(),
            UiaaSession {
                purpose,
                flows: flows.clone(),
                completed: Vec::new(),
                user: user.map(ToOwned::to_owned),
                registration_token: None,
                created: Instant::now(),
            },
        );
        let mut info = UiaaInfo::new(flows);
        info.session = Some(id);
        Ok(info)
    }

    /// Runs one step of user-interactive authentication. Returns `Ok` once a flow is complete;
    /// otherwise `Err(Error::Uiaa)` with the state the client needs to continue.
    ///
    /// `user` is the account being acted on, when there is one: a password stage must prove it.
    pub async fn authenticate(
        &self,
        purpose: Purpose,
        flows: Vec<AuthFlow>,
        auth: Option<&AuthData>,
        user: Option<&UserId>,
    ) -> Result<Completed> {
        let Some(auth) = auth else {
            return Err(Error::Uiaa(Box::new(
                self.new_session(purpose, flows, user)?,
            )));
        };
        let Some(session_id) = auth.session().map(ToOwned::to_owned) else {
            // A client may answer the first stage without having fetched a session.
            let info = self.new_session(purpose, flows.clone(), user)?;
            let id = info.session.clone().unwrap_or_default();
            return self.continue_session(&id, auth, purpose, user).await;
        };
        self.continue_session(&session_id, auth, purpose, user)
            .await
    }

    async fn continue_session(
        &self,
        session_id: &str,
        auth: &AuthData,
        purpose: Purpose,
        caller: Option<&UserId>,
    ) -> Result<Completed> {
        let (flows, user) = {
            let mut sessions = self.sessions.lock();
            self.expire(&mut sessions);
            let Some(s) = sessions.get(session_id) else {
                return Err(Error::unknown("Unknown or expired UIAA session"));
            };
            // A session proves one operation for one account; it cannot be carried elsewhere.
            if s.purpose != purpose || s.user.as_deref() != caller {
                return Err(Error::forbidden(
                    "This authentication session was started for another operation",
                ));
            }
            (s.flows.clone(), s.user.clone())
        };
        let stage = auth.auth_type();
        let allowed = stage
            .as_ref()
            .is_some_and(|t| flows.iter().any(|f| f.stages.contains(t)));
        let result: Result<(), &str> = if !allowed {
            Err("This authentication type is not offered here")
        } else {
            match auth {
                AuthData::Dummy(_) => Ok(()),
                AuthData::Password(p) => {
                    self.check_password(&p.identifier, &p.password, user.as_deref())
                        .await?
                }
                AuthData::RegistrationToken(t) => {
                    match self.registration_tokens.reserve(&t.token) {
                        Ok(true) => {
                            let mut sessions = self.sessions.lock();
                            match sessions.get_mut(session_id) {
                                Some(s) => {
                                    if let Some(old) = s.registration_token.replace(t.token.clone())
                                    {
                                        self.registration_tokens.release(&old);
                                    }
                                }
                                // The session expired meanwhile: give the reservation back.
                                None => self.registration_tokens.release(&t.token),
                            }
                            Ok(())
                        }
                        Ok(false) => Err("Invalid registration token"),
                        Err(e) => return Err(e),
                    }
                }
                _ => Err("This authentication type is not offered here"),
            }
        };

        let mut sessions = self.sessions.lock();
        let Some(s) = sessions.get_mut(session_id) else {
            return Err(Error::not_found("Unknown or expired UIAA session"));
        };
        if let (Ok(()), Some(stage)) = (&result, stage) {
            if !s.completed.contains(&stage) {
                s.completed.push(stage);
            }
        }
        let done = s
            .flows
            .iter()
            .any(|f| !f.stages.is_empty() && f.stages.iter().all(|st| s.completed.contains(st)));
        if done && result.is_ok() {
            let s = sessions.remove(session_id);
            return Ok(Completed {
                registration_token: s.and_then(|s| s.registration_token),
            });
        }
        let mut info = UiaaInfo::new(s.flows.clone());
        info.completed = s.completed.clone();
        info.session = Some(session_id.to_owned());
        if let Err(message) = result {
            info.auth_error = Some(stage_error(message));
        }
        Err(Error::Uiaa(Box::new(info)))
    }

    async fn check_password(
        &self,
        identifier: &UserIdentifier,
        password: &str,
        expected: Option<&UserId>,
    ) -> Result<Result<(), &'static str>> {
        let UserIdentifier::Matrix(id) = identifier else {
            return Ok(Err("Only user ID identifiers are supported"));
        };
        let name = &id.user;
        let Some(user_id) = self.users.user_id_from_login_name(name) else {
            return Ok(Err("Invalid username or password"));
        };
        if expected.is_some_and(|e| e != user_id) {
            return Ok(Err(
                "Password stage must authenticate the account being changed",
            ));
        }
        // Taken before the slow check so parallel guesses cannot all pass; refunded on success.
        self.ratelimit
            .take(ratelimit::Action::LoginFailure, user_id.as_str())
            .map_err(Error::limit_exceeded)?;
        let hash = match self.users.get(&user_id) {
            Ok(Some((_, r))) if !r.deactivated => r.password_hash,
            _ => None,
        };
        let ok = match hash {
            Some(h) => users::verify_password(password.to_owned(), h).await,
            None => false,
        };
        if ok {
            self.ratelimit
                .refund(ratelimit::Action::LoginFailure, user_id.as_str());
            Ok(Ok(()))
        } else {
            Ok(Err("Invalid username or password"))
        }
    }

    /// Drops a session and gives back any registration token it reserved, when the request it was
    /// authenticating failed after authentication.
    pub fn abandon(&self, completed: Completed) {
        if let Some(t) = completed.registration_token {
            self.registration_tokens.release(&t);
        }
    }
}
