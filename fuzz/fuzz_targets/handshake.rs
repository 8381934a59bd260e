//! The listening side of the TCP handshake (the clear preface, then Noise XXpsk3) fed a
//! peer's arbitrary bytes: it fails with a typed error, never panics or hangs. Random bytes
//! cannot complete it: the third message must open under the pre-shared key.
#![no_main]

use gundb::node::tcp::handshake_over;
use gundb::keys::SiteKeys;
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;
use tokio::io::AsyncWriteExt;

/// The listener's keys: one set for the whole run, as a node has.
static KEYS: LazyLock<SiteKeys> = LazyLock::new(SiteKeys::generate);

fuzz_target!(|bytes: &[u8]| {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("a runtime");
    runtime.block_on(async {
        let (ours, mut peer) = tokio::io::duplex(1 << 16);
        // The peer's bytes, then the end of its stream.
        let feed = async move {
            let _ = peer.write_all(bytes).await;
            let _ = peer.shutdown().await;
            peer // kept open for our writes until the handshake is over
        };
        let handshake = handshake_over(ours, &KEYS, b"the secret");
        let (result, _peer) = tokio::join!(handshake, feed);
        assert!(result.is_err(), "random bytes cannot prove the secret");
    });
});
