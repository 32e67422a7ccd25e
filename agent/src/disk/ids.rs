//! The identifiers a plan pins: the GPT disk GUID, each partition's GUID,
//! and the UUID (or vfat volume id) of every filesystem, swap area and LUKS
//! header. They are derived from one random seed per attempt (SHA-256 of the
//! seed and what the id is for), so the same seed, layout and targets give
//! the same plan: the disk journal keeps the seed, and a restarted agent
//! plans again and finds the same ids on the disks ([`super::journal`]).
//! [`Ids::random`] is the only impure part; the plan takes `Ids` as input.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ids {
    /// 32 random bytes, hex.
    seed: String,
}

impl std::fmt::Debug for Ids {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ids").field("seed", &self.seed).finish()
    }
}

impl Ids {
    /// A fresh seed from the operating system's random source.
    pub fn random() -> Result<Self> {
        let mut b = [0u8; 32];
        getrandom::getrandom(&mut b).context("reading random bytes for the disk ids")?;
        Ok(Self::from_seed(&b))
    }

    pub fn from_seed(seed: &[u8]) -> Self {
        Self {
            seed: seed.iter().map(|b| format!("{b:02x}")).collect(),
        }
    }

    fn bytes(&self, what: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.seed.as_bytes());
        h.update([0]);
        h.update(what.as_bytes());
        h.finalize().into()
    }

    /// A random-form (version 4) UUID for `what` ("disk main", "part main 2",
    /// "fs /dev/vda2").
    pub fn uuid(&self, what: &str) -> uuid::Uuid {
        let b = self.bytes(what);
        let mut u = [0u8; 16];
        u.copy_from_slice(&b[..16]);
        uuid::Builder::from_random_bytes(u).into_uuid()
    }

    /// A vfat volume id (8 hex digits, `mkfs.vfat -i`).
    pub fn volume_id(&self, what: &str) -> String {
        let b = self.bytes(what);
        format!("{:02x}{:02x}{:02x}{:02x}", b[0], b[1], b[2], b[3])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_the_seed_and_the_name() {
        let a = Ids::from_seed(&[1; 32]);
        assert_eq!(a.uuid("disk main"), a.uuid("disk main"));
        assert_ne!(a.uuid("disk main"), a.uuid("disk data"));
        assert_ne!(
            a.uuid("disk main"),
            Ids::from_seed(&[2; 32]).uuid("disk main")
        );
        assert_eq!(a.uuid("x").get_version_num(), 4);
        assert_eq!(a.volume_id("fs /dev/vda1").len(), 8);
        assert_ne!(Ids::random().unwrap(), Ids::random().unwrap());
    }
}
