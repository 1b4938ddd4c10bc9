//! Secrets handed to partners and operators: generation, hashing, display.
//!
//! A key is `<type>_<48 hex chars>`: 192 bits from the operating system's CSPRNG behind a
//! readable type prefix, so a leaked key can be recognised (and grepped for). Only its
//! SHA-256 hash is stored; the full text is shown once, when the key is created.

use sha2::{Digest, Sha256};

/// Random bytes in a key: 192 bits, comfortably over the 128 required.
const KEY_RANDOM_BYTES: usize = 24;
/// Characters of a key kept, in clear, as its `prefix` (type + 8 hex chars).
const DISPLAY_PREFIX_LEN: usize = 12;

/// The kinds of key the service issues; each has its own type prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// `pak_`: a partner's `partner_api_key`.
    PartnerApi,
    /// `dik_`: a workspace's data import key for one partner (`client_secret`).
    DataImport,
    /// `rak_`: a REST API key of the segment filter API.
    RestApi,
}

impl KeyKind {
    /// The readable type prefix, underscore included.
    pub fn type_prefix(self) -> &'static str {
        match self {
            KeyKind::PartnerApi => "pak_",
            KeyKind::DataImport => "dik_",
            KeyKind::RestApi => "rak_",
        }
    }
}

/// SHA-256 of a key's full text: what the database stores and looks keys up by.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyHash([u8; 32]);

impl KeyHash {
    /// Hashes a presented secret. The one key-hashing function of the service.
    pub fn of(secret: &str) -> Self {
        KeyHash(Sha256::digest(secret.as_bytes()).into())
    }

    /// The hash's bytes, for binding to a query.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyHash({}…)", hex::encode(&self.0[..4]))
    }
}

/// A freshly generated key. `secret` goes to the caller once and is then forgotten.
pub struct NewKey {
    /// The full key text.
    pub secret: String,
    /// Its hash, to store.
    pub hash: KeyHash,
    /// Its first characters, to store and show in listings.
    pub prefix: String,
}

impl std::fmt::Debug for NewKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewKey").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl NewKey {
    /// Generates a key of the given kind from the OS CSPRNG.
    pub fn generate(kind: KeyKind) -> Self {
        let mut random = [0u8; KEY_RANDOM_BYTES];
        rand::fill(&mut random);
        let secret = format!("{}{}", kind.type_prefix(), hex::encode(random));
        NewKey { hash: KeyHash::of(&secret), prefix: secret[..DISPLAY_PREFIX_LEN].to_owned(), secret }
    }
}

/// A key shown in a message without revealing it: its stored prefix and its last four
/// characters, e.g. `dik_3fa9c2d1…a1b2`.
pub fn mask(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    if chars.len() <= DISPLAY_PREFIX_LEN + 4 {
        // Too short to be one of ours: show nothing of it.
        return "…".to_owned();
    }
    let head: String = chars[..DISPLAY_PREFIX_LEN].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}…{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_carry_their_type_and_enough_randomness() {
        let a = NewKey::generate(KeyKind::DataImport);
        let b = NewKey::generate(KeyKind::DataImport);
        assert!(a.secret.starts_with("dik_"));
        assert_eq!(a.secret.len(), 4 + 2 * KEY_RANDOM_BYTES);
        assert_ne!(a.secret, b.secret);
        assert_eq!(a.hash, KeyHash::of(&a.secret));
        assert!(a.secret.starts_with(&a.prefix));
        assert!(!format!("{a:?}").contains(&a.secret));
    }

    #[test]
    fn mask_shows_prefix_and_last_four_only() {
        let key = NewKey::generate(KeyKind::DataImport);
        let masked = mask(&key.secret);
        assert!(masked.starts_with(&key.prefix));
        assert!(masked.ends_with(&key.secret[key.secret.len() - 4..]));
        assert!(!masked.contains(&key.secret[DISPLAY_PREFIX_LEN..key.secret.len() - 4]));
        assert_eq!(mask("short"), "…");
    }
}
