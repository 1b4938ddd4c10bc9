//! Names chosen by operators: partner names and API key scopes.

use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::Invalid;

/// A partner's name as it appears in URLs (`/partners/kubit/...`): lowercase
/// `[a-z0-9_-]{1,64}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct PartnerName(String);

impl PartnerName {
    /// Parses a raw name.
    pub fn parse(value: &str) -> Result<Self, Invalid> {
        let valid = !value.is_empty()
            && value.len() <= 64
            && value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if valid {
            Ok(PartnerName(value.to_owned()))
        } else {
            Err(Invalid::predicate("must be 1 to 64 characters of lowercase a-z, 0-9, '_' or '-'").at("name"))
        }
    }

    /// The name's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Parsed as a path or query parameter: an invalid one is the client's 400, never a
/// value that reaches the database (a NUL there is an error of PostgreSQL's).
impl<'de> Deserialize<'de> for PartnerName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        PartnerName::parse(&raw).map_err(|_| {
            serde::de::Error::custom("partner must be 1 to 64 characters of lowercase a-z, 0-9, '_' or '-'")
        })
    }
}

impl fmt::Display for PartnerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A name an operator gives a workspace or a key: trimmed, 1 to 255 bytes, no NUL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisplayName(String);

impl DisplayName {
    /// Longest name accepted, in bytes.
    pub const MAX_BYTES: usize = 255;

    /// Parses a raw name; surrounding white space is dropped.
    pub fn parse(value: &str) -> Result<Self, Invalid> {
        let name = value.trim();
        if name.is_empty() || name.len() > Self::MAX_BYTES || name.contains('\0') {
            Err(Invalid::predicate("must be a non-empty string of at most 255 bytes without NUL").at("name"))
        } else {
            Ok(DisplayName(name.to_owned()))
        }
    }

    /// The name's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a REST API key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub enum Scope {
    /// Read cohorts and evaluate segment filters (`/v1/...`).
    #[serde(rename = "segments.read")]
    SegmentsRead,
}

impl Scope {
    /// Every scope, with its wire name.
    pub const ALL: [Scope; 1] = [Scope::SegmentsRead];

    /// The scope's wire name, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::SegmentsRead => "segments.read",
        }
    }

    /// Parses a wire name.
    pub fn parse(value: &str) -> Result<Scope, Invalid> {
        Scope::ALL
            .into_iter()
            .find(|s| s.as_str() == value)
            .ok_or_else(|| Invalid::new("unknown scope; known scopes: segments.read"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partner_names() {
        assert!(PartnerName::parse("kubit").is_ok());
        assert!(PartnerName::parse("my_partner-2").is_ok());
        assert!(PartnerName::parse("Kubit").is_err());
        assert!(PartnerName::parse("").is_err());
        assert!(PartnerName::parse(&"a".repeat(65)).is_err());
        assert!(PartnerName::parse("a b").is_err());
        assert_eq!(
            PartnerName::parse("Kubit").unwrap_err().to_string(),
            "name must be 1 to 64 characters of lowercase a-z, 0-9, '_' or '-'"
        );
    }

    #[test]
    fn display_names() {
        assert_eq!(DisplayName::parse("  Acme ").unwrap().as_str(), "Acme");
        assert!(DisplayName::parse(" ").is_err());
        assert!(DisplayName::parse("a\0b").is_err());
        assert!(DisplayName::parse(&"x".repeat(255)).is_ok());
        assert_eq!(
            DisplayName::parse(&"x".repeat(256)).unwrap_err().to_string(),
            "name must be a non-empty string of at most 255 bytes without NUL"
        );
    }

    #[test]
    fn scopes_round_trip() {
        for scope in Scope::ALL {
            assert_eq!(Scope::parse(scope.as_str()), Ok(scope));
        }
        assert_eq!(
            Scope::parse("segments.write").unwrap_err().to_string(),
            "unknown scope; known scopes: segments.read"
        );
    }
}
