//! The server's ed25519 signing key: generated once, persisted by the caller as PKCS#8 DER.

use base64::Engine;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use ruma::{
    signatures::{Ed25519KeyPair, KeyPair},
    CanonicalJsonObject,
};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("invalid signing key: {0}")]
    Invalid(String),
    #[error("signing failed: {0}")]
    Sign(String),
}

/// A server signing key with its key ID (`ed25519:<version>`).
pub struct ServerSigningKey {
    pair: Ed25519KeyPair,
    der: Vec<u8>,
}

impl ServerSigningKey {
    /// Generates a new key with the given version (the part after `ed25519:`).
    pub fn generate(version: &str) -> Result<Self, KeyError> {
        let signing = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        let der = signing
            .to_pkcs8_der()
            .map_err(|e| KeyError::Invalid(e.to_string()))?
            .as_bytes()
            .to_vec();
        Self::from_der(&der, version)
    }

    /// Builds a key from a 32-byte ed25519 seed.
    pub fn from_seed(seed: &[u8; 32], version: &str) -> Result<Self, KeyError> {
        let der = ed25519_dalek::SigningKey::from_bytes(seed)
            .to_pkcs8_der()
            .map_err(|e| KeyError::Invalid(e.to_string()))?
            .as_bytes()
            .to_vec();
        Self::from_der(&der, version)
    }

    /// Loads a key from its PKCS#8 DER document.
    pub fn from_der(der: &[u8], version: &str) -> Result<Self, KeyError> {
        let pair = Ed25519KeyPair::from_der(der, version.to_owned())
            .map_err(|e| KeyError::Invalid(e.to_string()))?;
        Ok(Self {
            pair,
            der: der.to_vec(),
        })
    }

    pub fn der(&self) -> &[u8] {
        &self.der
    }

    pub fn version(&self) -> &str {
        self.pair.version()
    }

    /// `ed25519:<version>`.
    pub fn key_id(&self) -> String {
        format!("ed25519:{}", self.pair.version())
    }

    /// The public key, unpadded standard base64 as the key APIs publish it.
    pub fn public_key_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(self.pair.public_key())
    }

    pub fn pair(&self) -> &Ed25519KeyPair {
        &self.pair
    }

    /// Signs a JSON object in place under `server_name`.
    pub fn sign_json(
        &self,
        server_name: &str,
        object: &mut CanonicalJsonObject,
    ) -> Result<(), KeyError> {
        ruma::signatures::sign_json(server_name, &self.pair, object)
            .map_err(|e| KeyError::Sign(e.to_string()))
    }

    /// Raw signature of bytes (for tests and custom payloads).
    pub fn sign_bytes(&self, message: &[u8]) -> Vec<u8> {
        self.pair.sign(message).as_bytes().to_vec()
    }
}
