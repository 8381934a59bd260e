//! The listening side of the TCP handshake fed a peer's arbitrary bytes: it fails with a
//! typed error (or, for bytes that prove the secret, succeeds), never panics or hangs.
#![no_main]

use gundb::node::tcp::handshake_over;
use gundb::SiteId;
use libfuzzer_sys::fuzz_target;
use tokio::io::AsyncWriteExt;

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
        let handshake = handshake_over(ours, SiteId::from_u128(1), b"the secret");
        let (result, _peer) = tokio::join!(handshake, feed);
        assert!(result.is_err(), "random bytes cannot prove the secret");
    });
});
