//! Keyset cursors for the list verb (DESIGN §5).
//!
//! A cursor is `base64url(payload) "." base64url(mac)` (no padding), where the payload is the
//! JSON `{"v":1,"r":<resource>,"t":<created_at µs>,"i":<id>,"s"?:<source>}` and the MAC is
//! HMAC-SHA256 over grant id, resource and payload under a key derived from the sealing key
//! (shared by all replicas). A cursor therefore cannot be forged, replayed under another grant or
//! resource, or altered to probe; any such cursor is a 400, never a silent first page.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use uuid::Uuid;

const VERSION: u8 = 1;

/// The position after which the next page starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    #[serde(rename = "v")]
    pub version: u8,
    #[serde(rename = "r")]
    pub resource: String,
    /// `created_at` in microseconds since the epoch (Postgres precision, exact round trip).
    #[serde(rename = "t")]
    pub created_at_us: i64,
    #[serde(rename = "i")]
    pub id: Uuid,
    /// For resources spanning tables (memory: `insights` then `preferences`).
    #[serde(rename = "s", default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl Position {
    pub fn new(resource: &str, created_at: DateTime<Utc>, id: Uuid, source: Option<&str>) -> Self {
        Self {
            version: VERSION,
            resource: resource.to_string(),
            created_at_us: created_at.timestamp_micros(),
            id,
            source: source.map(str::to_string),
        }
    }

    pub fn created_at(&self) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp_micros(self.created_at_us).unwrap_or_default()
    }
}

/// Signs and checks cursors.
#[derive(Clone)]
pub struct CursorCodec {
    key: [u8; 32],
}

impl std::fmt::Debug for CursorCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CursorCodec(<redacted>)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Invalid cursor")]
pub struct InvalidCursor;

impl CursorCodec {
    pub fn new(key: [u8; 32]) -> Self {
        Self { key }
    }

    fn mac(&self, grant_id: Uuid, resource: &str, payload: &[u8]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(grant_id.as_bytes());
        mac.update(&[0]);
        mac.update(resource.as_bytes());
        mac.update(&[0]);
        mac.update(payload);
        mac
    }

    pub fn encode(&self, grant_id: Uuid, position: &Position) -> String {
        let payload = serde_json::to_vec(position).expect("a position always serialises");
        self.sign(grant_id, &position.resource, &payload)
    }

    /// Checks the MAC for this grant and resource, then decodes.
    ///
    /// # Errors
    /// [`InvalidCursor`] for anything but a cursor this gateway issued for this grant and resource.
    pub fn decode(&self, grant_id: Uuid, resource: &str, cursor: &str) -> Result<Position, InvalidCursor> {
        let payload = self.open(grant_id, resource, cursor)?;
        let position: Position = serde_json::from_slice(&payload).map_err(|_| InvalidCursor)?;
        if position.version != VERSION || position.resource != resource {
            return Err(InvalidCursor);
        }
        Ok(position)
    }

    /// Signs any payload for `grant_id` under `binding`: the list verb binds the resource, the
    /// search verb the resource and a hash of the query (`search/<resource>/<hash>`, which no
    /// resource name can equal), so a cursor only continues the request that issued it.
    pub fn sign(&self, grant_id: Uuid, binding: &str, payload: &[u8]) -> String {
        let tag = self.mac(grant_id, binding, payload).finalize().into_bytes();
        format!("{}.{}", URL_SAFE_NO_PAD.encode(payload), URL_SAFE_NO_PAD.encode(tag))
    }

    /// The payload of a cursor [`Self::sign`]ed for this grant and binding.
    ///
    /// # Errors
    /// [`InvalidCursor`] when the MAC does not verify.
    pub fn open(&self, grant_id: Uuid, binding: &str, cursor: &str) -> Result<Vec<u8>, InvalidCursor> {
        let (payload_b64, tag_b64) = cursor.split_once('.').ok_or(InvalidCursor)?;
        let payload = URL_SAFE_NO_PAD.decode(payload_b64).map_err(|_| InvalidCursor)?;
        let tag = URL_SAFE_NO_PAD.decode(tag_b64).map_err(|_| InvalidCursor)?;
        self.mac(grant_id, binding, &payload).verify_slice(&tag).map_err(|_| InvalidCursor)?;
        Ok(payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codec() -> CursorCodec {
        CursorCodec::new([7; 32])
    }

    #[test]
    fn round_trips_exactly() {
        let grant = Uuid::new_v4();
        let at = DateTime::<Utc>::from_timestamp_micros(1_700_000_000_123_456).unwrap();
        let p = Position::new("memory", at, Uuid::new_v4(), Some("insights"));
        let c = codec().encode(grant, &p);
        assert!(!c.contains('=') && !c.contains('+') && !c.contains('/'));
        let back = codec().decode(grant, "memory", &c).unwrap();
        assert_eq!(back, p);
        assert_eq!(back.created_at(), at);
    }

    #[test]
    fn tampering_other_grants_and_resources_are_rejected() {
        let grant = Uuid::new_v4();
        let c = codec().encode(grant, &Position::new("tasks", Utc::now(), Uuid::new_v4(), None));
        assert_eq!(codec().decode(Uuid::new_v4(), "tasks", &c), Err(InvalidCursor));
        assert_eq!(codec().decode(grant, "notes", &c), Err(InvalidCursor));
        assert_eq!(CursorCodec::new([8; 32]).decode(grant, "tasks", &c), Err(InvalidCursor));
        for i in 0..c.len() {
            let mut bytes = c.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let changed = String::from_utf8(bytes).unwrap();
            if changed != c {
                assert!(codec().decode(grant, "tasks", &changed).is_err(), "byte {i}");
            }
        }
        assert!(codec().decode(grant, "tasks", "").is_err());
        assert!(codec().decode(grant, "tasks", "abc").is_err());
    }
}
