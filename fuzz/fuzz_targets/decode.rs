//! Event, frame and document decoding of arbitrary bytes: an error, never a panic, a hang
//! or an allocation past the limit.
#![no_main]

use gundb::node::Frame;
use gundb::{codec, doc::Patch, Event};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(event) = codec::decode::<Event>(bytes) {
        // What decodes survives a round trip unchanged.
        let again = codec::encode(&event).expect("a decoded event encodes");
        assert_eq!(codec::decode::<Event>(&again).expect("its encoding decodes"), event);
    }
    let _ = codec::decode_frame::<Frame>(bytes);
    let _ = codec::decode::<Patch>(bytes);
    let _ = Patch::from_slice(bytes);
});
