//! `access_token`: switching a channel's token, and the periodic expiry check of every
//! channel token.

use super::*;

/// Longest interval between two checks of a channel token.
pub(super) const TOKEN_CHECK_INTERVAL: i64 = 5 * 60;

/// Next token check: `min(5 min, exp - now)` from now.
pub(super) fn token_check_at(claims: &Claims) -> Instant {
    let now = unix_now();
    let secs = claims.expires_in(now).clamp(0, TOKEN_CHECK_INTERVAL);
    Instant::now() + Duration::from_secs(secs.unsigned_abs())
}

/// Verifies a channel token as the reference's `confirm_token` does: a valid JWT whose `exp`
/// is still in the future.
pub(super) fn verify_channel_token(
    app: &App,
    token: &str,
) -> Result<Claims, realtide_auth::AuthError> {
    let now = unix_now();
    let claims = app.config.jwt.verify_at(token, now)?;
    claims.confirm_expiry(now)?;
    Ok(claims)
}

impl Session {
    pub(super) async fn access_token(&mut self, topic: &Topic, token: Option<String>) {
        let Some(channel) = self.channels.get(topic) else {
            return;
        };
        let Some(token) = token else {
            return;
        };
        if token.starts_with("sb_") || token == channel.token {
            return;
        }
        let claims = match verify_channel_token(&self.app, &token) {
            Ok(claims) => claims,
            Err(error) => {
                let message = token_shutdown_message(&error);
                self.shutdown_channel(topic, &message);
                return;
            }
        };
        let group = ClaimsGroup::new(&claims);
        // Private channels re-evaluate their read policies with the new claims.
        let mut policies = None;
        if let (Some(private), Some(postgres)) = (&channel.private, self.app.postgres.clone()) {
            let old = private.policies;
            let requester = Requester {
                claims: &group,
                headers: &self.headers,
            };
            let presence = old.presence_read != Grant::Unknown;
            let sub_topic = channel.sub_topic().to_owned();
            let checked = postgres
                .authorizer
                .read(&sub_topic, requester, presence)
                .await;
            let new = match checked {
                Ok(new) => new,
                Err(AuthzError::Policy(_)) => {
                    self.shutdown_channel(topic, &no_read_message(&sub_topic));
                    return;
                }
                Err(_) => {
                    self.shutdown_channel(
                        topic,
                        "Realtime was unable to connect to the project database",
                    );
                    return;
                }
            };
            let lost = |was: Grant, now: Grant| was.granted() && !now.granted();
            if !new.broadcast_read.granted() && !new.presence_read.granted() {
                self.shutdown_channel(topic, &no_read_message(&sub_topic));
                return;
            }
            if lost(old.broadcast_read, new.broadcast_read)
                || lost(old.presence_read, new.presence_read)
            {
                self.shutdown_channel(topic, &lost_read_message(&sub_topic));
                return;
            }
            policies = Some(new);
        }
        let Some(channel) = self.channels.get_mut(topic) else {
            return;
        };
        channel.token = token;
        channel.token_check_at = token_check_at(&claims);
        if let (Some(private), Some(new)) = (channel.private.as_mut(), policies) {
            // Reads as just evaluated; writes are checked again on next use.
            private.policies = Policies {
                broadcast_read: new.broadcast_read,
                presence_read: new.presence_read,
                ..Policies::default()
            };
            private
                .reads
                .broadcast
                .store(new.broadcast_read.granted(), Ordering::Relaxed);
            private
                .reads
                .presence
                .store(new.presence_read.granted(), Ordering::Relaxed);
            private.claims = group.clone();
        }
        if let Some(postgres) = &self.app.postgres {
            // Later changes are checked with the new claims.
            postgres
                .subscriptions
                .update_claims(channel.id, Arc::new(group));
        }
    }

    pub(super) fn next_token_check(&self) -> Option<Instant> {
        self.channels.values().map(|c| c.token_check_at).min()
    }

    pub(super) fn check_tokens(&mut self) {
        let now = Instant::now();
        let due: Vec<Topic> = self
            .channels
            .iter()
            .filter(|(_, c)| c.token_check_at <= now)
            .map(|(t, _)| t.clone())
            .collect();
        for topic in due {
            let Some(channel) = self.channels.get_mut(&topic) else {
                continue;
            };
            match verify_channel_token(&self.app, &channel.token) {
                Ok(claims) => channel.token_check_at = token_check_at(&claims),
                Err(error) => {
                    let message = token_shutdown_message(&error);
                    self.shutdown_channel(&topic, &message);
                }
            }
        }
    }
}
