//! Identifiers that travel on the wire.

use std::fmt;

/// Serializer version chosen by the `vsn` query parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Vsn {
    /// `1.0.0`: JSON objects, never binary.
    V1,
    /// `2.0.0`: JSON arrays plus binary frames.
    V2,
}

impl Vsn {
    /// Parses a `vsn` value as Phoenix does (`~> 1.0.0` / `~> 2.0.0`): `1.0.x` or `2.0.x`.
    /// A missing value means V1; anything unmatched is `None` (the server answers 403).
    pub fn parse(value: Option<&str>) -> Option<Vsn> {
        let Some(value) = value else {
            return Some(Vsn::V1);
        };
        let mut parts = value.split('.');
        let (major, minor, patch) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || minor != "0" || !is_number(patch) {
            return None;
        }
        match major {
            "1" => Some(Vsn::V1),
            "2" => Some(Vsn::V2),
            _ => None,
        }
    }

    /// Index into per-serializer caches.
    pub fn index(self) -> usize {
        match self {
            Vsn::V1 => 0,
            Vsn::V2 => 1,
        }
    }
}

fn is_number(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Wraps a raw value.
            pub fn new(value: impl Into<String>) -> Self {
                Self(value.into())
            }
            /// The raw value.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

string_id!(
    /// A channel topic as sent by the client, e.g. `realtime:room1`.
    Topic
);
string_id!(
    /// The ref of the join that opened a channel; echoed on that channel's pushes.
    JoinRef
);
string_id!(
    /// A message ref; replies echo it.
    Ref
);

/// The prefix every routed channel topic carries.
pub const TOPIC_PREFIX: &str = "realtime:";

impl Topic {
    /// The sub-topic (`room1` for `realtime:room1`), or `None` when the topic is not routed.
    pub fn sub_topic(&self) -> Option<&str> {
        self.0.strip_prefix(TOPIC_PREFIX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vsn_parsing() {
        assert_eq!(Vsn::parse(None), Some(Vsn::V1));
        assert_eq!(Vsn::parse(Some("1.0.0")), Some(Vsn::V1));
        assert_eq!(Vsn::parse(Some("2.0.0")), Some(Vsn::V2));
        assert_eq!(Vsn::parse(Some("2.0.7")), Some(Vsn::V2));
        for bad in [
            "", "3.0.0", "2.1.0", "2.0", "2.0.0.0", "abc", "2.0.x", "1.0.-1",
        ] {
            assert_eq!(Vsn::parse(Some(bad)), None, "{bad}");
        }
    }

    #[test]
    fn sub_topic() {
        assert_eq!(Topic::new("realtime:room:1").sub_topic(), Some("room:1"));
        assert_eq!(Topic::new("realtime:").sub_topic(), Some(""));
        assert_eq!(Topic::new("Realtime:x").sub_topic(), None);
    }
}
