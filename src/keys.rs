//! A site's secret keys, each made once from the operating system's random source and kept
//! in a file beside the site's database that only its owner may read (mode 0600), the way
//! SSH keeps a host key: a key file others can read is refused, not used.
//!
//! * The **signing key** (ed25519, [`SIGNING_KEY_FILE`]): the site's identity. Its id is
//!   derived from the public half ([`SiteId::of_key`]), so anyone holding the public key can
//!   check that it speaks for the site, without a directory of keys.
//! * The **link key** (X25519, [`LINK_KEY_FILE`]): the static key of the site's Noise
//!   handshakes ([`crate::node::tcp`]).

use crate::id::SiteId;
use ed25519_dalek::SigningKey;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// The file in a site's database folder that holds its link key: the private half, then the
/// public one.
pub const LINK_KEY_FILE: &str = "link.key";

/// The file in a site's database folder that holds its signing key's 32-byte seed.
pub const SIGNING_KEY_FILE: &str = "signing.key";

/// The Noise protocol a link speaks: the XX pattern (both sides send their static keys,
/// encrypted), with the cluster's shared secret mixed in as a pre-shared key after the
/// third message (`psk3`), X25519, ChaCha20-Poly1305 and BLAKE2s.
pub const NOISE_PARAMS: &str = "Noise_XXpsk3_25519_ChaChaPoly_BLAKE2s";

/// Why a site's keys could not be read or made.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A key file could not be read or written.
    #[error("key file {path:?}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// A key file has the wrong length: it was damaged. A site whose signing key is lost
    /// cannot be the same site again (its id is the key's); start it from an empty folder.
    #[error("key file {path:?} holds {len} bytes, not {expected}: it was damaged")]
    Damaged {
        /// The key file.
        path: PathBuf,
        /// Its length.
        len: usize,
        /// The length it must have.
        expected: usize,
    },
    /// Users other than the owner may read or write a key file.
    #[error("key file {path:?} has mode {mode:o}: others may read it; run `chmod 600 {path:?}`")]
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

    /// The key in `folder`'s [`LINK_KEY_FILE`], made (and stored) if there is none yet.
    ///
    /// # Errors
    /// As [`SiteKeys::load_or_create`].
    pub fn load_or_create(folder: &Path) -> Result<Self, KeyError> {
        let bytes = load_or_create_file(folder, LINK_KEY_FILE, 64, || {
            let key = Self::generate();
            let mut bytes = Zeroizing::new(vec![0u8; 64]);
            bytes[..32].copy_from_slice(&key.private[..]);
            bytes[32..].copy_from_slice(&key.public);
            bytes
        })?;
        let (mut private, mut public) = (Zeroizing::new([0u8; 32]), [0u8; 32]);
        private.copy_from_slice(&bytes[..32]);
        public.copy_from_slice(&bytes[32..]);
        Ok(Self { private, public })
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

/// A site's keys: its identity and its link key. Both private halves are wiped from memory
/// when dropped.
#[derive(Clone)]
pub struct SiteKeys {
    signing: SigningKey,
    link: LinkKey,
}

impl SiteKeys {
    /// New keys from the system's random source.
    pub fn generate() -> Self {
        let mut seed = Zeroizing::new([0u8; 32]);
        // As for LinkKey::generate: a system without randomness cannot run a site.
        getrandom::fill(&mut seed[..]).expect("the system's random source works");
        Self::with_signing_seed(&seed)
    }

    /// Keys whose signing key comes from `seed` (and a fresh link key): the same seed is
    /// the same site. For tests and simulations, which need sites they can name again.
    pub fn with_signing_seed(seed: &[u8; 32]) -> Self {
        Self { signing: SigningKey::from_bytes(seed), link: LinkKey::generate() }
    }

    /// The keys in `folder` ([`SIGNING_KEY_FILE`] and [`LINK_KEY_FILE`]), each made and
    /// stored if missing: written to a temporary file of mode 0600, synced, renamed into
    /// place, and the folder synced, so a crash leaves no key or the whole key.
    ///
    /// # Errors
    /// A file cannot be read or written, is damaged, or others may read it.
    pub fn load_or_create(folder: &Path) -> Result<Self, KeyError> {
        let seed = load_or_create_file(folder, SIGNING_KEY_FILE, 32, || {
            let mut seed = Zeroizing::new(vec![0u8; 32]);
            getrandom::fill(&mut seed[..]).expect("the system's random source works");
            seed
        })?;
        let mut signing = Zeroizing::new([0u8; 32]);
        signing.copy_from_slice(&seed);
        Ok(Self { signing: SigningKey::from_bytes(&signing), link: LinkKey::load_or_create(folder)? })
    }

    /// The site these keys are: derived from the signing key's public half.
    pub fn site_id(&self) -> SiteId {
        SiteId::of_key(&self.public_key())
    }

    /// The signing key's public half.
    pub fn public_key(&self) -> [u8; 32] {
        self.signing.verifying_key().to_bytes()
    }

    /// The signing key.
    pub fn signing(&self) -> &SigningKey {
        &self.signing
    }

    /// The link key.
    pub fn link(&self) -> &LinkKey {
        &self.link
    }
}

impl std::fmt::Debug for SiteKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never a private half: the site and the link key's Debug (its public half only).
        f.debug_struct("SiteKeys").field("site", &self.site_id()).field("link", &self.link).finish_non_exhaustive()
    }
}

/// The `len` bytes of `folder`'s key file `name`, made by `make` and stored if it is missing.
fn load_or_create_file(
    folder: &Path,
    name: &str,
    len: usize,
    make: impl FnOnce() -> Zeroizing<Vec<u8>>,
) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let path = folder.join(name);
    let io = |source| KeyError::Io { path: path.clone(), source };
    match std::fs::read(&path) {
        Ok(bytes) => {
            let bytes = Zeroizing::new(bytes);
            check_private(&path)?;
            if bytes.len() != len {
                return Err(KeyError::Damaged { path, len: bytes.len(), expected: len });
            }
            Ok(bytes)
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let bytes = make();
            store(folder, name, &bytes).map_err(io)?;
            Ok(bytes)
        }
        Err(error) => Err(io(error)),
    }
}

/// Writes `bytes` to `folder`'s file `name` so that a crash leaves either no file or the
/// whole key: a temporary file of mode 0600, synced, renamed into place, the folder synced.
fn store(folder: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let temporary = folder.join(format!("{name}.new"));
    let _ = std::fs::remove_file(&temporary); // left by a crash while writing
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temporary, folder.join(name))?;
    std::fs::File::open(folder)?.sync_all()
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

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn keys_are_made_once_kept_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let made = SiteKeys::load_or_create(dir.path()).unwrap();
        let again = SiteKeys::load_or_create(dir.path()).unwrap();
        assert_eq!(made.site_id(), again.site_id());
        assert_eq!(made.signing().to_bytes(), again.signing().to_bytes());
        assert_eq!((made.link().public(), made.link().private()), (again.link().public(), again.link().private()));
        let other = SiteKeys::generate();
        assert_ne!(made.site_id(), other.site_id(), "keys are random");
        assert_ne!(made.link().public(), other.link().public());
        #[cfg(unix)]
        for file in [LINK_KEY_FILE, SIGNING_KEY_FILE] {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path().join(file)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{file}");
        }
        let shown = format!("{made:?}");
        assert!(!shown.contains(&hex(made.link().private())[..16]), "Debug shows no private link key: {shown}");
        assert!(!shown.contains(&hex(&made.signing().to_bytes())[..16]), "nor the signing key: {shown}");
    }

    /// A site's id is its signing key's: the same seed is the same site, another is another.
    #[test]
    fn the_site_id_is_derived_from_the_signing_key() {
        let (one, again, two) = (
            SiteKeys::with_signing_seed(&[1; 32]),
            SiteKeys::with_signing_seed(&[1; 32]),
            SiteKeys::with_signing_seed(&[2; 32]),
        );
        assert_eq!(one.site_id(), again.site_id());
        assert_ne!(one.site_id(), two.site_id());
        assert_eq!(one.site_id(), SiteId::of_key(&one.public_key()));
    }

    #[test]
    #[cfg(unix)]
    fn a_key_others_may_read_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        SiteKeys::load_or_create(dir.path()).unwrap();
        let path = dir.path().join(SIGNING_KEY_FILE);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let refused = SiteKeys::load_or_create(dir.path()).unwrap_err();
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
        assert!(matches!(refused, KeyError::Damaged { len: 40, expected: 64, .. }), "{refused}");
    }
}
