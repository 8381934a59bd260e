//! The wire and disk format: the only module that names bincode.
//!
//! Every encoded value is one format version byte followed by bincode's standard
//! encoding. Every decode is of outside bytes, so each one is size-limited (before and
//! during decoding), rejects trailing bytes (bincode 2 ignores them silently) and returns a
//! [`CodecError`], never a panic. Swapping the encoder means changing this file only.

use crate::error::Cause;
use crate::limits;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The format this build writes and reads. Bump it when an encoded type changes shape.
pub const FORMAT_VERSION: u8 = 1;

/// Why bytes could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// No bytes at all: not even a version byte.
    #[error("empty input: expected a format version byte")]
    Empty,
    /// Written by another format version; upgrade or downgrade the reader.
    #[error("format version {found} is not supported (this build reads version {expected})")]
    Version {
        /// The version byte read.
        found: u8,
        /// The version this build reads.
        expected: u8,
    },
    /// The bytes end before the value does.
    #[error("truncated input: {missing} more bytes needed")]
    Truncated {
        /// How many more bytes the decoder wanted.
        missing: usize,
    },
    /// The value is larger than the limit for this kind of value.
    #[error("value of {len} bytes or more exceeds the limit of {max} bytes")]
    Oversized {
        /// Bytes given or claimed.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Bytes remain after a complete value: the input is not one value.
    #[error("{count} trailing bytes after the value")]
    TrailingBytes {
        /// How many bytes were left over.
        count: usize,
    },
    /// The bytes are not a value of the expected type.
    #[error("malformed input: {0}")]
    Malformed(#[source] Cause),
    /// The value cannot be encoded (for example a map serializer without a known length).
    #[error("cannot encode value: {0}")]
    Encode(#[source] Cause),
}

/// Encodes `value` as a version byte followed by its bincode encoding.
///
/// # Errors
/// [`CodecError::Encode`] when serde cannot encode the value, and
/// [`CodecError::Oversized`] when it exceeds [`limits::FRAME_BYTES_MAX`].
///
/// # Examples
/// ```
/// let bytes = gundb::codec::encode(&("hello", 42u32))?;
/// let back: (String, u32) = gundb::codec::decode(&bytes)?;
/// assert_eq!(back, ("hello".to_owned(), 42));
/// # Ok::<(), gundb::codec::CodecError>(())
/// ```
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    encode_limited(value, limits::FRAME_BYTES_MAX)
}

/// [`encode`] into `out` (cleared first), reusing its allocation: for callers that encode
/// many values in a row.
///
/// # Errors
/// As [`encode`]; `out` then holds no complete value.
pub fn encode_into<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
    out.clear();
    out.push(FORMAT_VERSION);
    bincode::serde::encode_into_std_write(value, out, config()).map_err(|e| CodecError::Encode(Cause::new(e)))?;
    if out.len() > limits::FRAME_BYTES_MAX {
        return Err(CodecError::Oversized { len: out.len(), max: limits::FRAME_BYTES_MAX });
    }
    Ok(())
}

/// Decodes one value written by [`encode`], reading at most [`limits::FRAME_BYTES_MAX`].
///
/// # Errors
/// A [`CodecError`] for empty, wrong-version, truncated, oversized, trailing or malformed
/// input. Never panics, whatever the bytes.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    decode_limited::<T, { limits::FRAME_BYTES_MAX }>(bytes)
}

/// Encodes a wire frame: like [`encode`] but up to [`limits::WIRE_FRAME_BYTES_MAX`], since
/// a frame carries a batch of events.
///
/// # Errors
/// As [`encode`], with the frame limit.
pub fn encode_frame<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    encode_limited(value, limits::WIRE_FRAME_BYTES_MAX)
}

/// Decodes a wire frame written by [`encode_frame`]: bytes from another site.
///
/// # Errors
/// As [`decode`], with the frame limit. Never panics, whatever the bytes.
pub fn decode_frame<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    decode_limited::<T, { limits::WIRE_FRAME_BYTES_MAX }>(bytes)
}

/// Encodes a view snapshot: like [`encode`] but up to [`limits::VIEW_BYTES_MAX`], since a
/// view may outgrow a frame. Snapshots are read back only from this site's own disk.
///
/// # Errors
/// As [`encode`], with the view limit.
pub fn encode_view<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    encode_limited(value, limits::VIEW_BYTES_MAX)
}

/// Decodes a view snapshot written by [`encode_view`].
///
/// # Errors
/// As [`decode`], with the view limit.
pub fn decode_view<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    decode_limited::<T, { limits::VIEW_BYTES_MAX }>(bytes)
}

/// Encodes one item of a run: like [`encode`] without the version byte, so that items
/// encoded apart can be joined into one run with [`join_run`].
///
/// # Errors
/// As [`encode`].
pub fn encode_run_item<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::new();
    bincode::serde::encode_into_std_write(value, &mut out, config()).map_err(|e| CodecError::Encode(Cause::new(e)))?;
    if out.len() > limits::FRAME_BYTES_MAX {
        return Err(CodecError::Oversized { len: out.len(), max: limits::FRAME_BYTES_MAX });
    }
    Ok(out)
}

/// Appends `value`'s encoding to a run being built (as [`encode_run_item`] would encode it,
/// without the allocation): for a run whose items are written in parts.
///
/// # Errors
/// As [`encode_run_item`].
pub fn push_run_item<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) -> Result<(), CodecError> {
    bincode::serde::encode_into_std_write(value, out, config()).map_err(|e| CodecError::Encode(Cause::new(e)))?;
    Ok(())
}

/// A run: the version byte, then items from [`encode_run_item`] one after another.
pub fn join_run<'a>(items: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = vec![FORMAT_VERSION];
    for item in items {
        out.extend_from_slice(item);
    }
    out
}

/// Decodes every item of a run written by [`join_run`], reading at most
/// [`limits::RUN_BYTES_MAX`] bytes.
///
/// # Errors
/// A [`CodecError`] for empty, wrong-version, truncated, oversized or malformed input.
/// Never panics, whatever the bytes.
pub fn decode_run<T: DeserializeOwned>(bytes: &[u8]) -> Result<Vec<T>, CodecError> {
    if bytes.len() > limits::RUN_BYTES_MAX {
        return Err(CodecError::Oversized { len: bytes.len(), max: limits::RUN_BYTES_MAX });
    }
    let (&version, mut body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(CodecError::Version { found: version, expected: FORMAT_VERSION });
    }
    let mut items = Vec::new();
    while !body.is_empty() {
        let (item, used) =
            bincode::serde::decode_from_slice(body, config().with_limit::<{ limits::FRAME_BYTES_MAX }>())
                .map_err(|error| decode_error(error, limits::FRAME_BYTES_MAX))?;
        items.push(item);
        body = body.get(used..).unwrap_or_default();
    }
    Ok(items)
}

fn encode_limited<T: Serialize + ?Sized>(value: &T, max: usize) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![FORMAT_VERSION];
    bincode::serde::encode_into_std_write(value, &mut out, config()).map_err(|e| CodecError::Encode(Cause::new(e)))?;
    if out.len() > max {
        return Err(CodecError::Oversized { len: out.len(), max });
    }
    Ok(out)
}

/// Decodes a value from the start of `bytes` (at most [`limits::FRAME_BYTES_MAX`] of
/// them), ignoring what follows it: for a header whose later versions may add fields,
/// such as the preface a link starts with, which every version must read the version
/// number of.
///
/// # Errors
/// As [`decode`], except that trailing bytes are not one. Never panics.
pub fn decode_leading<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    decode_checked::<T, { limits::FRAME_BYTES_MAX }>(bytes).map(|(value, _)| value)
}

fn decode_limited<T: DeserializeOwned, const MAX: usize>(bytes: &[u8]) -> Result<T, CodecError> {
    match decode_checked::<T, MAX>(bytes)? {
        (value, 0) => Ok(value),
        (_, count) => Err(CodecError::TrailingBytes { count }),
    }
}

/// A value decoded from the start of `bytes`, and how many bytes follow it.
fn decode_checked<T: DeserializeOwned, const MAX: usize>(bytes: &[u8]) -> Result<(T, usize), CodecError> {
    if bytes.len() > MAX {
        return Err(CodecError::Oversized { len: bytes.len(), max: MAX });
    }
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(CodecError::Version { found: version, expected: FORMAT_VERSION });
    }
    // The limit also bounds what a length prefix inside the value may make bincode allocate.
    let (value, used) = bincode::serde::decode_from_slice(body, config().with_limit::<MAX>())
        .map_err(|error| decode_error(error, MAX))?;
    Ok((value, body.len() - used))
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

fn decode_error(error: bincode::error::DecodeError, max: usize) -> CodecError {
    use bincode::error::DecodeError;
    match error {
        DecodeError::UnexpectedEnd { additional } => CodecError::Truncated { missing: additional },
        DecodeError::LimitExceeded => CodecError::Oversized { len: max + 1, max },
        other => CodecError::Malformed(Cause::new(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;
    use crate::id::{Lane, SiteId, StreamId};
    use proptest::prelude::*;

    fn arb_event() -> impl Strategy<Value = Event> {
        (
            any::<u128>(),
            any::<(u128, u128)>(),
            1u64..u64::MAX,
            proptest::collection::vec((any::<u128>(), 1u64..u64::MAX), 0..8),
            any::<(u64, u64)>(),
            "[a-z_.]{0,24}",
            proptest::collection::vec(any::<u8>(), 0..256),
        )
            .prop_map(|(id, (site, stream), seq, deps, (lamport, timestamp_ms), stream_type, payload)| {
                let lane = Lane::new(SiteId::from_u128(site), StreamId::from_u128(stream));
                let deps: Vec<(Lane, u64)> =
                    deps.into_iter().map(|(s, n)| (Lane::new(SiteId::from_u128(s), lane.stream), n)).collect();
                Event { stream_type, payload, ..crate::testkit::event(id, lane, seq, &deps, lamport, timestamp_ms) }
            })
    }

    #[test]
    fn each_kind_of_bad_input_has_its_own_error() {
        let bytes = encode(&(7u64, "seven".to_owned())).unwrap();
        assert_eq!(decode::<(u64, String)>(&[]), Err(CodecError::Empty));
        let mut wrong_version = bytes.clone();
        wrong_version[0] = FORMAT_VERSION + 1;
        assert!(matches!(decode::<(u64, String)>(&wrong_version), Err(CodecError::Version { .. })));
        assert!(matches!(decode::<(u64, String)>(&bytes[..bytes.len() - 2]), Err(CodecError::Truncated { .. })));
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert_eq!(decode::<(u64, String)>(&trailing), Err(CodecError::TrailingBytes { count: 1 }));
        let oversized = vec![FORMAT_VERSION; limits::FRAME_BYTES_MAX + 1];
        assert!(matches!(decode::<Vec<u8>>(&oversized), Err(CodecError::Oversized { .. })));
        // A length prefix claiming 2^60 bytes must fail on the limit, not try to allocate.
        let mut huge = vec![FORMAT_VERSION, 0xFF];
        huge.extend_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(decode::<Vec<u8>>(&huge).is_err());
        assert!(matches!(decode::<bool>(&[FORMAT_VERSION, 7]), Err(CodecError::Malformed(_))));
    }

    proptest! {
        #[test]
        fn any_event_round_trips(event in arb_event()) {
            let bytes = encode(&event).unwrap();
            prop_assert_eq!(decode::<Event>(&bytes).unwrap(), event.clone());
            // A reused buffer, holding something else before, gives the same bytes.
            let mut reused = vec![0xAB; 300];
            encode_into(&event, &mut reused).unwrap();
            prop_assert_eq!(reused, bytes);
        }

        #[test]
        fn a_run_gives_back_its_items(items in proptest::collection::vec(arb_event(), 0..6)) {
            let encoded: Vec<Vec<u8>> = items.iter().map(|item| encode_run_item(item).unwrap()).collect();
            let run = join_run(encoded.iter().map(Vec::as_slice));
            prop_assert_eq!(decode_run::<Event>(&run).unwrap(), items);
            for cut in 1..run.len() {
                // A cut inside an item is an error; a cut between items is a shorter run.
                let _ = decode_run::<Event>(&run[..cut]);
            }
        }

        /// Payloads are encoded as bytes (`serde_bytes`), copied at once: the same encoding
        /// as a sequence of `u8`, so events and stored blocks written before read the same.
        #[test]
        fn bytes_encode_as_a_sequence_of_u8(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            prop_assert_eq!(encode(serde_bytes::Bytes::new(&bytes)).unwrap(), encode(&bytes).unwrap());
            let back: serde_bytes::ByteBuf = decode(&encode(&bytes).unwrap()).unwrap();
            prop_assert_eq!(back.into_vec(), bytes);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<Event>(&bytes);
            let mut versioned = vec![FORMAT_VERSION];
            versioned.extend_from_slice(&bytes);
            let _ = decode::<Event>(&versioned);
        }

        #[test]
        fn every_strict_prefix_of_an_event_is_an_error(event in arb_event()) {
            let bytes = encode(&event).unwrap();
            for cut in 0..bytes.len() {
                prop_assert!(decode::<Event>(&bytes[..cut]).is_err());
            }
        }
    }
}
