//! `system` message payloads: `{"extension","status","message","channel"}`.

use crate::encode::push_json_str;

/// The `status` of a system message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SystemStatus {
    /// `ok`
    Ok,
    /// `error`
    Error,
}

/// Renders a `system` payload. `channel` is the sub-topic; only `Server requested disconnect`
/// omits it.
pub fn system_payload(
    extension: &str,
    status: SystemStatus,
    message: &str,
    channel: Option<&str>,
) -> String {
    let mut out = String::from("{\"extension\":");
    push_json_str(&mut out, extension);
    out.push_str(match status {
        SystemStatus::Ok => ",\"status\":\"ok\"",
        SystemStatus::Error => ",\"status\":\"error\"",
    });
    out.push_str(",\"message\":");
    push_json_str(&mut out, message);
    if let Some(channel) = channel {
        out.push_str(",\"channel\":");
        push_json_str(&mut out, channel);
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape() {
        assert_eq!(
            system_payload(
                "system",
                SystemStatus::Error,
                "Token has expired 3 seconds ago",
                Some("room1")
            ),
            r#"{"extension":"system","status":"error","message":"Token has expired 3 seconds ago","channel":"room1"}"#
        );
        assert_eq!(
            system_payload(
                "system",
                SystemStatus::Ok,
                "Server requested disconnect",
                None
            ),
            r#"{"extension":"system","status":"ok","message":"Server requested disconnect"}"#
        );
    }
}
