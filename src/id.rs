//! Identities: [`SiteId`], [`StreamId`], [`EventId`], [`Lane`] and [`Seq`].
//!
//! Plain newtypes so that a site, a stream and an event can never be mixed up, and a
//! position in a lane can never be mixed up with a count or an index. Nothing here creates
//! ids from randomness: callers pass the `Uuid` in, which keeps the pure core replayable.

use serde::{Deserialize, Serialize};
use std::fmt;
use uuid::Uuid;

macro_rules! uuid_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh random id (UUID v4). Only shells call this; the pure core takes ids as input.
            pub fn random() -> Self {
                Self(Uuid::new_v4())
            }

            /// The id whose 128 bits are `n`: deterministic ids for tests and simulations.
            pub const fn from_u128(n: u128) -> Self {
                Self(Uuid::from_u128(n))
            }

            /// The underlying uuid.
            pub const fn as_uuid(&self) -> &Uuid {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // The first 8 hex digits are enough to tell ids apart in logs and test output.
                write!(f, "{}({})", stringify!($name), &self.0.simple().to_string()[..8])
            }
        }
    };
}

uuid_newtype!(
    /// One replica: a process or in-process instance with its own database. Derived from
    /// the site's public signing key ([`SiteId::of_key`], [`crate::keys::SiteKeys`]) and
    /// stored in its database, so it survives restarts and anyone can check that a key is
    /// the site's.
    SiteId
);

impl SiteId {
    /// The id of the site whose public ed25519 signing key is `key`: the first 128 bits of
    /// its BLAKE3 hash in key-derivation mode, under a context string of its own.
    pub fn of_key(key: &[u8; 32]) -> SiteId {
        let hash = blake3::derive_key("gundb 2026-11 site id", key);
        let mut id = [0u8; 16];
        id.copy_from_slice(&hash[..16]);
        SiteId(Uuid::from_bytes(id))
    }
}
uuid_newtype!(
    /// A sequence of related events, of one stream type.
    StreamId
);

impl StreamId {
    /// The stream id every site derives from `name` (a UUID v5 in a namespace of gundb's
    /// own), so that sites agree on a stream's id without exchanging it.
    pub fn named(name: &str) -> Self {
        const NAMESPACE: Uuid = Uuid::from_u128(0x6775_6e64_622d_7374_7265_616d_2d6e_616d);
        Self(Uuid::new_v5(&NAMESPACE, name.as_bytes()))
    }

    /// The stream `text` names: the id it spells when it parses as a UUID, otherwise the
    /// id every site derives from it as a name ([`StreamId::named`]). What `gundb node`'s
    /// paths and `gundb inspect` take.
    pub fn from_name_or_id(text: &str) -> Self {
        text.parse().map(StreamId).unwrap_or_else(|_| StreamId::named(text))
    }
}
uuid_newtype!(
    /// One event. Two different events never share an id; copies of one event do.
    EventId
);

/// A position in a lane: 1 for its first event, then 2, 3 … with no gaps. `Seq(0)` means
/// "nothing yet".
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Seq(pub u64);

impl Seq {
    /// Nothing delivered yet.
    pub const ZERO: Seq = Seq(0);

    /// The seq after this one.
    ///
    /// # Panics
    /// At `u64::MAX`, which a lane cannot reach (it would take 584 years at 1 GHz).
    pub fn next(self) -> Seq {
        Seq(self.0.checked_add(1).expect("a lane never reaches u64::MAX events"))
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// A position in a site's log: every event the site stores, its own and its peers', is
/// numbered 1, 2, 3 … in the order it became durable there. A peer replicating from the
/// site keeps one `LogPos` per site it reads from, whatever the number of streams.
/// `LogPos(0)` means "nothing yet".
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Debug, Serialize, Deserialize)]
pub struct LogPos(pub u64);

impl fmt::Display for LogPos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The events one site wrote to one stream. A lane has exactly one writer, so it is totally
/// ordered by [`Seq`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Lane {
    /// The lane's only writer.
    pub site: SiteId,
    /// The stream the lane belongs to.
    pub stream: StreamId,
}

impl Lane {
    /// The lane of `site` in `stream`.
    pub const fn new(site: SiteId, stream: StreamId) -> Self {
        Self { site, stream }
    }
}

impl fmt::Display for Lane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "lane({}, {})", self.site, self.stream)
    }
}

impl fmt::Debug for Lane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Lane({:?}, {:?})", self.site, self.stream)
    }
}
