//! Errors that reach clients, and the one place each is mapped to its wire form.

use axum::http::StatusCode;
use realtide_auth::AuthError;

/// Why a join was refused.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// `realtime:` without a sub-topic.
    #[error("topic name required")]
    TopicNameRequired,
    /// The server is shutting down.
    #[error("server restarting")]
    Restarting,
    /// `PRIVATE_ONLY` and a public join.
    #[error("public channels are not allowed")]
    PrivateOnly,
    /// `TENANT_MAX_CONCURRENT_USERS` reached.
    #[error("too many connected users")]
    TooManyUsers,
    /// `TENANT_MAX_JOINS_PER_SECOND` tripped (the socket is also closed).
    #[error("too many joins per second")]
    TooManyJoins,
    /// The socket already has the maximum number of channels.
    #[error("too many channels")]
    TooManyChannels,
    /// The channel token is not acceptable.
    #[error("invalid channel token")]
    Token(#[source] AuthError),
    /// Private channel without read permission.
    #[error("unauthorized private channel")]
    Unauthorized {
        /// The sub-topic.
        sub_topic: String,
    },
    /// The read check could not be made.
    #[error("private channel authorization failed")]
    Authorization {
        /// The sub-topic.
        sub_topic: String,
        /// Why.
        #[source]
        source: crate::db::authorization::AuthzError,
    },
    /// `since` / `limit` are not integers.
    #[error("invalid replay parameters")]
    ReplayInvalid,
    /// The replay query failed.
    #[error("replay failed")]
    ReplayFailed,
    /// Replay requested on a public channel.
    #[error("replay on a public channel")]
    ReplayOnPublic,
}

impl JoinError {
    /// The `reason` of the join error reply, `<Code>: <message>` as the reference words it.
    pub fn reason(&self) -> String {
        match self {
            JoinError::TopicNameRequired => {
                "TopicNameRequired: You must provide a topic name".into()
            }
            JoinError::Restarting => {
                "RealtimeRestarting: Realtime is restarting, please standby".into()
            }
            JoinError::TooManyChannels => "ChannelRateLimitReached: Too many channels".into(),
            JoinError::PrivateOnly => {
                "PrivateOnly: This project only allows private channels".into()
            }
            JoinError::TooManyUsers => {
                "ConnectionRateLimitReached: Too many connected users".into()
            }
            JoinError::TooManyJoins => {
                "ClientJoinRateLimitReached: Too many joins per second".into()
            }
            JoinError::Token(error) => match error.join_code() {
                Some(code) => format!("{code}: {error}"),
                None => "Unknown Error on Channel".into(),
            },
            JoinError::Unauthorized { sub_topic } => {
                crate::db::authorization::unauthorized_reason(sub_topic)
            }
            JoinError::Authorization { sub_topic, source } => source.join_reason(sub_topic),
            JoinError::ReplayInvalid => {
                "UnableToReplayMessages: Replay params are not valid".into()
            }
            JoinError::ReplayFailed => {
                "UnableToReplayMessages: Realtime was unable to replay messages".into()
            }
            JoinError::ReplayOnPublic => {
                "UnableToReplayMessages: Replay is not allowed for public channels".into()
            }
        }
    }
}

/// Why a WebSocket connect was refused before the upgrade.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No `apikey` query parameter and no `x-api-key` header.
    #[error("API key is missing")]
    MissingApiKey,
    /// The connect token was rejected.
    #[error("connect token rejected")]
    Token(#[source] AuthError),
    /// `TENANT_MAX_CONCURRENT_USERS` reached.
    #[error("Too many connected users")]
    TooManyUsers,
    /// `TENANT_MAX_JOINS_PER_SECOND` tripped.
    #[error("Too many joins per second")]
    TooManyJoins,
    /// `MAX_CONNECTIONS` open.
    #[error("Too many connections")]
    TooManyConnections,
}

impl ConnectError {
    /// HTTP status and `error` text of the refusal.
    pub fn response_parts(&self) -> (StatusCode, String) {
        match self {
            ConnectError::MissingApiKey => (StatusCode::UNAUTHORIZED, "API key is missing".into()),
            ConnectError::Token(AuthError::Expired { .. }) => {
                (StatusCode::UNAUTHORIZED, "Token has expired".into())
            }
            ConnectError::Token(AuthError::ClaimMismatch(_)) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "Error connecting to Realtime".into(),
            ),
            ConnectError::Token(other) => (StatusCode::UNAUTHORIZED, other.to_string()),
            ConnectError::TooManyUsers | ConnectError::TooManyJoins => {
                (StatusCode::TOO_MANY_REQUESTS, self.to_string())
            }
            ConnectError::TooManyConnections => (StatusCode::SERVICE_UNAVAILABLE, self.to_string()),
        }
    }
}

/// The message a channel is shut down with when its token stops being acceptable.
pub fn token_shutdown_message(error: &AuthError) -> String {
    match error {
        AuthError::ClaimMismatch(_) => "Unknown Error on Channel".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons() {
        assert_eq!(
            JoinError::Token(AuthError::Expired { seconds_ago: 7 }).reason(),
            "InvalidJWTToken: Token has expired 7 seconds ago"
        );
        assert_eq!(
            JoinError::Token(AuthError::Malformed).reason(),
            "MalformedJWT: The token provided is not a valid JWT"
        );
        assert_eq!(
            JoinError::Unauthorized {
                sub_topic: "a:b".into()
            }
            .reason(),
            "Unauthorized: You do not have permissions to read from this Channel topic: a:b"
        );
        assert_eq!(
            ConnectError::Token(AuthError::MissingClaims).response_parts(),
            (
                StatusCode::UNAUTHORIZED,
                "Fields `role` and `exp` are required in JWT".into()
            )
        );
    }
}
