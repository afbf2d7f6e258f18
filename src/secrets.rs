//! Tenant secrets, envelope-encrypted: each tenant has its own data key (AES-256-GCM), which
//! seals every secret of the tenant's products; the data key is stored only wrapped by the
//! master key. The catalogue seals a secret the moment it is written, so no plaintext secret
//! reaches its database, its change log, a TCS snapshot or an edge's cache file.
//!
//! The master key is a local key file (32 random bytes, created owner-only: the embedded
//! default) or a key in AWS KMS. Each sealed value is bound to where it belongs (tenant, product, secret name) as
//! associated data, so a ciphertext moved to another tenant or name does not open.

use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

/// Why sealing or opening failed. Never carries a secret or a key.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The key file could not be read or created.
    #[error("master key file {path}: {reason}")]
    KeyFile {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// A data key was wrapped by another master key than the one this process holds.
    #[error("data key wrapped by master key {found}, not {ours}")]
    OtherMasterKey {
        /// The wrapping key's id.
        found: String,
        /// This process's key id.
        ours: String,
    },
    /// A ciphertext did not open: altered, moved, or sealed under another key.
    #[error("a sealed value does not open with this key")]
    Open,
    /// Not base64, or the wrong length.
    #[error("malformed sealed value: {0}")]
    Malformed(&'static str),
    /// The system's random source failed.
    #[error("no randomness")]
    Random,
    /// KMS refused or could not be reached.
    #[error("KMS: {0}")]
    Kms(String),
    /// A KMS key was named without a region to find it in.
    #[error("a KMS key needs a region: its own setting, a key ARN, or AWS_REGION")]
    KmsRegion,
}

/// A value sealed with AES-256-GCM: the nonce and the ciphertext (with its tag), in base64.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sealed {
    /// 12 bytes, random per value.
    pub nonce: String,
    /// The ciphertext and its 16-byte tag.
    pub ciphertext: String,
}

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealed(..)")
    }
}

/// A tenant's data key as stored: wrapped by the master key `key_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WrappedKey {
    /// Which master key wrapped it: `file:<fingerprint>` or `kms:<key id>`.
    pub key_id: String,
    /// The data key wrapped by it, in base64 (a key file's nonce and ciphertext; KMS's
    /// ciphertext blob).
    pub wrapped: String,
}

/// A tenant's data key, in memory only.
pub struct DataKey(LessSafeKey, [u8; 32]);

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

impl DataKey {
    /// A new random data key.
    pub fn generate() -> Result<DataKey, SecretError> {
        let mut bytes = [0u8; 32];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| SecretError::Random)?;
        Self::from_bytes(bytes)
    }

    fn from_bytes(bytes: [u8; 32]) -> Result<DataKey, SecretError> {
        let key = UnboundKey::new(&AES_256_GCM, &bytes)
            .map_err(|_| SecretError::Malformed("not an AES-256 key"))?;
        Ok(DataKey(LessSafeKey::new(key), bytes))
    }

    /// The key as its 32 bytes, for a cache that keeps many: a `DataKey` also holds the
    /// cipher's expanded key schedule, about 600 bytes.
    pub fn bytes(&self) -> DataKeyBytes {
        DataKeyBytes(self.1)
    }

    /// Seals `plaintext`, bound to `context` (who it belongs to).
    pub fn seal(&self, context: &str, plaintext: &[u8]) -> Result<Sealed, SecretError> {
        seal(&self.0, context, plaintext)
    }

    /// Opens what [`DataKey::seal`] sealed with the same `context`.
    pub fn open(&self, context: &str, sealed: &Sealed) -> Result<Vec<u8>, SecretError> {
        open(&self.0, context, sealed)
    }
}

/// A tenant's data key as its 32 bytes only ([`DataKey::bytes`]); [`DataKeyBytes::key`] expands
/// it again (an AES key schedule, well under a microsecond).
#[derive(Clone)]
pub struct DataKeyBytes([u8; 32]);

impl DataKeyBytes {
    /// The key, ready to open.
    pub fn key(&self) -> Result<DataKey, SecretError> {
        DataKey::from_bytes(self.0)
    }
}

impl std::fmt::Debug for DataKeyBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKeyBytes(..)")
    }
}

/// The associated data of a tenant's secret: where it belongs.
pub fn secret_context(tenant: &str, product: &str, name: &str) -> String {
    format!("secret\0{tenant}\0{product}\0{name}")
}

fn seal(key: &LessSafeKey, context: &str, plaintext: &[u8]) -> Result<Sealed, SecretError> {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| SecretError::Random)?;
    let mut buf = plaintext.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(context.as_bytes()),
        &mut buf,
    )
    .map_err(|_| SecretError::Random)?;
    Ok(Sealed {
        nonce: B64.encode(nonce),
        ciphertext: B64.encode(buf),
    })
}

fn open(key: &LessSafeKey, context: &str, sealed: &Sealed) -> Result<Vec<u8>, SecretError> {
    let nonce: [u8; NONCE_LEN] = B64
        .decode(&sealed.nonce)
        .map_err(|_| SecretError::Malformed("nonce is not base64"))?
        .try_into()
        .map_err(|_| SecretError::Malformed("nonce is not 12 bytes"))?;
    let mut buf = B64
        .decode(&sealed.ciphertext)
        .map_err(|_| SecretError::Malformed("ciphertext is not base64"))?;
    let plain = key
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(context.as_bytes()),
            &mut buf,
        )
        .map_err(|_| SecretError::Open)?;
    Ok(plain.to_vec())
}

/// The master key: a local key file (the embedded default) or a key in AWS KMS.
pub enum MasterKey {
    /// 32 bytes in an owner-only file.
    File {
        /// `file:<first 8 bytes of its SHA-256>`.
        id: String,
        /// The key (boxed: the AES key schedule is large).
        key: Box<LessSafeKey>,
    },
    /// A KMS key: data keys are wrapped by `Encrypt` and unwrapped by `Decrypt`, each bound to
    /// its tenant by the encryption context.
    Kms {
        /// `kms:<key id>`.
        id: String,
        /// The key id or ARN as KMS names it.
        key_id: String,
        /// The client.
        client: aws_sdk_kms::Client,
    },
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKey")
            .field("id", &self.id())
            .finish_non_exhaustive()
    }
}

impl MasterKey {
    /// Reads the key file at `path`, or creates it (32 random bytes, mode 0600) when absent.
    /// A file others may read, or of another length, is refused.
    pub fn load_or_create(path: &Path) -> Result<MasterKey, SecretError> {
        let err = |reason: String| SecretError::KeyFile {
            path: path.display().to_string(),
            reason,
        };
        if !path.exists() {
            let mut bytes = [0u8; 32];
            SystemRandom::new()
                .fill(&mut bytes)
                .map_err(|_| SecretError::Random)?;
            crate::durable::replace_private(path, &bytes).map_err(|e| err(e.to_string()))?;
        }
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(err("readable by others than its owner (chmod 600)".into()));
        }
        let bytes: [u8; 32] = std::fs::read(path)
            .map_err(|e| err(e.to_string()))?
            .try_into()
            .map_err(|_| err("not 32 bytes".into()))?;
        let fingerprint = ring::digest::digest(&ring::digest::SHA256, &bytes);
        let id = format!(
            "file:{}",
            fingerprint.as_ref()[..8]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        let DataKey(key, _) = DataKey::from_bytes(bytes)?;
        Ok(MasterKey::File {
            id,
            key: Box::new(key),
        })
    }

    /// Reads an existing key file (a previous key: never created).
    pub fn load_existing(path: &Path) -> Result<MasterKey, SecretError> {
        if !path.exists() {
            return Err(SecretError::KeyFile {
                path: path.display().to_string(),
                reason: "no such file".into(),
            });
        }
        Self::load_or_create(path)
    }

    /// The KMS key `key_id`, reached with `sdk` (the standard credential chain).
    pub fn kms(sdk: &aws_config::SdkConfig, key_id: &str) -> MasterKey {
        MasterKey::Kms {
            id: format!("kms:{key_id}"),
            key_id: key_id.to_owned(),
            client: aws_sdk_kms::Client::new(sdk),
        }
    }

    /// The key's id, as wrapped keys name it.
    pub fn id(&self) -> &str {
        match self {
            MasterKey::File { id, .. } | MasterKey::Kms { id, .. } => id,
        }
    }

    /// Wraps tenant `tenant`'s data key.
    pub async fn wrap_key(&self, tenant: &str, key: &DataKey) -> Result<WrappedKey, SecretError> {
        let wrapped = match self {
            MasterKey::File { key: master, .. } => {
                let sealed = seal(master, &format!("data-key\0{tenant}"), &key.1)?;
                format!("{}.{}", sealed.nonce, sealed.ciphertext)
            }
            MasterKey::Kms { key_id, client, .. } => {
                let out = client
                    .encrypt()
                    .key_id(key_id)
                    .plaintext(aws_sdk_kms::primitives::Blob::new(key.1.to_vec()))
                    .encryption_context("tenant", tenant)
                    .send()
                    .await
                    .map_err(|e| SecretError::Kms(crate::aws::sdk_error(&e)))?;
                let blob = out
                    .ciphertext_blob
                    .ok_or(SecretError::Malformed("KMS answered no ciphertext"))?;
                B64.encode(blob.as_ref())
            }
        };
        Ok(WrappedKey {
            key_id: self.id().to_owned(),
            wrapped,
        })
    }

    /// Unwraps tenant `tenant`'s data key.
    pub async fn unwrap_key(&self, tenant: &str, wrapped: &WrappedKey) -> Result<DataKey, SecretError> {
        if wrapped.key_id != self.id() {
            return Err(SecretError::OtherMasterKey {
                found: wrapped.key_id.clone(),
                ours: self.id().to_owned(),
            });
        }
        let bytes = match self {
            MasterKey::File { key: master, .. } => {
                let (nonce, ciphertext) = wrapped
                    .wrapped
                    .split_once('.')
                    .ok_or(SecretError::Malformed("a wrapped key is not nonce.ciphertext"))?;
                let sealed = Sealed {
                    nonce: nonce.to_owned(),
                    ciphertext: ciphertext.to_owned(),
                };
                open(master, &format!("data-key\0{tenant}"), &sealed)?
            }
            MasterKey::Kms { key_id, client, .. } => {
                let blob = B64
                    .decode(&wrapped.wrapped)
                    .map_err(|_| SecretError::Malformed("a wrapped key is not base64"))?;
                let out = client
                    .decrypt()
                    .key_id(key_id)
                    .ciphertext_blob(aws_sdk_kms::primitives::Blob::new(blob))
                    .encryption_context("tenant", tenant)
                    .send()
                    .await
                    .map_err(|e| SecretError::Kms(crate::aws::sdk_error(&e)))?;
                out.plaintext
                    .ok_or(SecretError::Malformed("KMS answered no plaintext"))?
                    .into_inner()
            }
        };
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| SecretError::Malformed("a data key is not 32 bytes"))?;
        DataKey::from_bytes(bytes)
    }
}

/// The master key in AWS KMS (`--kms-key-id`), reached with the standard credential chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KmsConfig {
    /// The key's id, alias or ARN.
    pub key_id: String,
    /// Its region (default: the ARN's, else `AWS_REGION`).
    #[serde(default)]
    pub region: Option<String>,
    /// Another endpoint than AWS's (an emulator, a VPC endpoint).
    #[serde(default)]
    pub endpoint: Option<String>,
}

impl KmsConfig {
    /// The master key it names.
    pub async fn master_key(&self) -> Result<MasterKey, SecretError> {
        let from_arn = self
            .key_id
            .strip_prefix("arn:")
            .and_then(|rest| rest.split(':').nth(2))
            .map(str::to_owned);
        let region = self
            .region
            .clone()
            .or(from_arn)
            .or_else(|| std::env::var("AWS_REGION").ok())
            .ok_or(SecretError::KmsRegion)?;
        let sdk = crate::aws::sdk_config(&region, self.endpoint.as_deref()).await;
        Ok(MasterKey::kms(&sdk, &self.key_id))
    }
}

/// Where a reader of secrets (the sidecar) finds the master keys: a key file or a KMS key, and
/// the key files data keys may still be wrapped with during a rotation. Nothing is created: a
/// reader only opens what the catalogue sealed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySettings {
    /// The catalogue's master key file (owner-only).
    #[serde(default)]
    pub master_key: Option<std::path::PathBuf>,
    /// The catalogue's KMS master key instead.
    #[serde(default)]
    pub kms: Option<KmsConfig>,
    /// Earlier master key files.
    #[serde(default)]
    pub previous_master_keys: Vec<std::path::PathBuf>,
}

impl KeySettings {
    /// Every problem of the settings.
    pub fn problems(&self) -> Vec<String> {
        match (&self.master_key, &self.kms) {
            (Some(_), Some(_)) => vec!["[secrets]: master_key and kms name two master keys; give one".into()],
            (None, None) => vec!["[secrets]: give master_key (a key file) or [secrets.kms]".into()],
            _ => Vec::new(),
        }
    }

    /// The keys, read (the files) or reached (KMS, lazily: a KMS down now is not an error yet).
    pub async fn load(&self) -> Result<MasterKeys, SecretError> {
        let current = match (&self.master_key, &self.kms) {
            (_, Some(kms)) => kms.master_key().await?,
            (Some(path), None) => MasterKey::load_existing(path)?,
            (None, None) => {
                return Err(SecretError::KeyFile {
                    path: String::new(),
                    reason: "no master key configured".into(),
                })
            }
        };
        let previous = self
            .previous_master_keys
            .iter()
            .map(|p| MasterKey::load_existing(p))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(MasterKeys::new(current, previous))
    }
}

/// The master key data keys are wrapped with now, and the ones they may still be wrapped with
/// (during a rotation): a data key opens with whichever key its id names.
#[derive(Debug)]
pub struct MasterKeys {
    current: MasterKey,
    previous: Vec<MasterKey>,
}

impl MasterKeys {
    /// `current`, and `previous` keys still accepted for unwrapping.
    pub fn new(current: MasterKey, previous: Vec<MasterKey>) -> MasterKeys {
        MasterKeys { current, previous }
    }

    /// The key new data keys are wrapped with.
    pub fn current(&self) -> &MasterKey {
        &self.current
    }

    /// Unwraps tenant `tenant`'s data key with the key that wrapped it.
    pub async fn unwrap_key(&self, tenant: &str, wrapped: &WrappedKey) -> Result<DataKey, SecretError> {
        let key = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.id() == wrapped.key_id)
            .ok_or_else(|| SecretError::OtherMasterKey {
                found: wrapped.key_id.clone(),
                ours: self.current.id().to_owned(),
            })?;
        key.unwrap_key(tenant, wrapped).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn secrets_open_only_where_they_were_sealed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let master = MasterKey::load_or_create(&path).unwrap();
        let again = MasterKey::load_or_create(&path).unwrap();
        assert_eq!(master.id(), again.id(), "the file is read back, not replaced");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );

        let dk = DataKey::generate().unwrap();
        let ctx = secret_context("acme", "jira", "db_password");
        let sealed = dk.seal(&ctx, b"hunter2").unwrap();
        assert!(!sealed.ciphertext.contains("hunter2"));
        assert_eq!(dk.open(&ctx, &sealed).unwrap(), b"hunter2");
        // Moved to another tenant or name: refused.
        assert!(dk
            .open(&secret_context("globex", "jira", "db_password"), &sealed)
            .is_err());
        assert!(dk
            .open(&secret_context("acme", "jira", "api_key"), &sealed)
            .is_err());

        let wrapped = master.wrap_key("acme", &dk).await.unwrap();
        let back = again.unwrap_key("acme", &wrapped).await.unwrap();
        assert_eq!(back.open(&ctx, &sealed).unwrap(), b"hunter2");
        let elsewhere = master.unwrap_key("globex", &wrapped).await;
        assert!(elsewhere.is_err(), "a data key is bound to its tenant");
        let other = MasterKey::load_or_create(&dir.path().join("other.key")).unwrap();
        let refused = other.unwrap_key("acme", &wrapped).await;
        assert!(matches!(refused, Err(SecretError::OtherMasterKey { .. })));
        // Debug output names no key material.
        assert_eq!(format!("{dk:?} {sealed:?}"), "DataKey(..) Sealed(..)");
    }

    #[test]
    fn a_key_file_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        std::fs::write(&path, [7u8; 32]).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(MasterKey::load_or_create(&path).is_err());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(MasterKey::load_or_create(&path).is_ok());
        std::fs::write(&path, [7u8; 31]).unwrap();
        assert!(MasterKey::load_or_create(&path).is_err());
    }
}
