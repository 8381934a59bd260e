//! A site's secret key: the static X25519 key pair its links authenticate with (in the
//! Noise handshake of [`crate::node::tcp`]). It is made once, from the operating
//! system's random source through the Noise library, and kept in a file beside the
//! site's database that only its owner may read ([`LINK_KEY_FILE`], mode 0600), the way
//! SSH keeps a host key: a key others can read is refused, not used.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// The file in a site's database folder that holds its link key.
pub const LINK_KEY_FILE: &str = "link.key";

/// The Noise protocol a link speaks: the XX pattern (both sides send their static keys,
/// encrypted), with the cluster's shared secret mixed in as a pre-shared key after the
/// third message (`psk3`), X25519, ChaCha20-Poly1305 and BLAKE2s.
pub const NOISE_PARAMS: &str = "Noise_XXpsk3_25519_ChaChaPoly_BLAKE2s";

/// Why a site's link key could not be read or made.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read or written.
    #[error("link key {path:?}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The key file is not 64 bytes (the private key, then the public one).
    #[error("link key {path:?} holds {len} bytes, not 64: it was damaged; move it aside to make a new one")]
    Damaged {
        /// The key file.
        path: PathBuf,
        /// Its length.
        len: usize,
    },
    /// Users other than the owner may read or write the key file.
    #[error("link key {path:?} has mode {mode:o}: others may read it; run `chmod 600 {path:?}`")]
    Exposed {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

/// A site's static link key pair. The private half is wiped from memory when dropped.
#[derive(Clone)]
pub struct LinkKey {
    private: Zeroizing<[u8; 32]>,
    public: [u8; 32],
}

impl LinkKey {
    /// A new key pair from the system's random source.
    pub fn generate() -> Self {
        // NOISE_PARAMS is a constant the default resolver supports (every link handshake
        // would fail otherwise, and the tests make some), and a system without randomness
        // cannot make site or event ids either (uuid panics the same way).
        let params = NOISE_PARAMS.parse().expect("NOISE_PARAMS names a protocol snow supports");
        let pair = snow::Builder::new(params).generate_keypair().expect("the system's random source works");
        let pair_private = Zeroizing::new(pair.private);
        let (mut private, mut public) = (Zeroizing::new([0u8; 32]), [0u8; 32]);
        // X25519 keys are 32 bytes each, by the curve's definition.
        private.copy_from_slice(&pair_private[..32]);
        public.copy_from_slice(&pair.public[..32]);
        Self { private, public }
    }

    /// The key in `folder`'s [`LINK_KEY_FILE`], made (and stored, durably, mode 0600) if
    /// there is none yet.
    ///
    /// # Errors
    /// The file cannot be read or written, is damaged, or others may read it.
    pub fn load_or_create(folder: &Path) -> Result<Self, KeyError> {
        let path = folder.join(LINK_KEY_FILE);
        let io = |source| KeyError::Io { path: path.clone(), source };
        match std::fs::read(&path) {
            Ok(bytes) => {
                let bytes = Zeroizing::new(bytes);
                check_private(&path)?;
                if bytes.len() != 64 {
                    return Err(KeyError::Damaged { path, len: bytes.len() });
                }
                let (mut private, mut public) = (Zeroizing::new([0u8; 32]), [0u8; 32]);
                private.copy_from_slice(&bytes[..32]);
                public.copy_from_slice(&bytes[32..]);
                Ok(Self { private, public })
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::generate();
                key.store(folder, &path).map_err(io)?;
                Ok(key)
            }
            Err(error) => Err(io(error)),
        }
    }

    /// Writes the key to `path` in `folder` so that a crash leaves either no file or the
    /// whole key: a temporary file, synced, renamed into place, and the folder synced.
    fn store(&self, folder: &Path, path: &Path) -> std::io::Result<()> {
        let temporary = folder.join(format!("{LINK_KEY_FILE}.new"));
        let _ = std::fs::remove_file(&temporary); // left by a crash while writing
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&temporary)?;
        let mut bytes = Zeroizing::new([0u8; 64]);
        bytes[..32].copy_from_slice(&self.private[..]);
        bytes[32..].copy_from_slice(&self.public);
        file.write_all(&bytes[..])?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)?;
        std::fs::File::open(folder)?.sync_all()
    }

    /// The private half, for the Noise handshake.
    pub(crate) fn private(&self) -> &[u8; 32] {
        &self.private
    }

    /// The public half: what peers see of this site in the handshake.
    pub fn public(&self) -> &[u8; 32] {
        &self.public
    }
}

impl std::fmt::Debug for LinkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the private half, not even in a debug log.
        let public: String = self.public.iter().take(8).map(|b| format!("{b:02x}")).collect();
        f.debug_struct("LinkKey").field("public", &format_args!("{public}…")).finish_non_exhaustive()
    }
}

/// Refuses a key file that users other than its owner may read or write.
fn check_private(path: &Path) -> Result<(), KeyError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let metadata = std::fs::metadata(path).map_err(|source| KeyError::Io { path: path.to_path_buf(), source })?;
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Exposed { path: path.to_path_buf(), mode });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_key_is_made_once_kept_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let made = LinkKey::load_or_create(dir.path()).unwrap();
        let again = LinkKey::load_or_create(dir.path()).unwrap();
        assert_eq!(made.public(), again.public());
        assert_eq!(made.private(), again.private());
        assert_ne!(made.public(), LinkKey::generate().public(), "keys are random");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path().join(LINK_KEY_FILE)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let private: String = made.private().iter().map(|b| format!("{b:02x}")).collect();
        assert!(!format!("{made:?}").contains(&private[..16]), "Debug shows no part of the private key");
    }

    #[test]
    #[cfg(unix)]
    fn a_key_others_may_read_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        LinkKey::load_or_create(dir.path()).unwrap();
        let path = dir.path().join(LINK_KEY_FILE);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let refused = LinkKey::load_or_create(dir.path()).unwrap_err();
        assert!(matches!(refused, KeyError::Exposed { mode: 0o644, .. }), "{refused}");
        assert!(refused.to_string().contains("chmod 600"), "{refused}");
    }

    #[test]
    fn a_damaged_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LINK_KEY_FILE);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        options.open(&path).unwrap().write_all(&[7; 40]).unwrap();
        let refused = LinkKey::load_or_create(dir.path()).unwrap_err();
        assert!(matches!(refused, KeyError::Damaged { len: 40, .. }), "{refused}");
    }
}
