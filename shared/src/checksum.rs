//! Full-object checksums computed while streaming, in the encodings S3 expects.

use serde::{Deserialize, Serialize};

/// A checksum algorithm S3 supports as a full-object checksum of a multipart upload.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ChecksumAlgorithm {
    /// CRC-64/NVME, S3's default (the default here too).
    #[default]
    Crc64nvme,
    /// CRC-32C (Castagnoli).
    Crc32c,
}

impl ChecksumAlgorithm {
    fn crc(self) -> crc_fast::CrcAlgorithm {
        match self {
            ChecksumAlgorithm::Crc64nvme => crc_fast::CrcAlgorithm::Crc64Nvme,
            ChecksumAlgorithm::Crc32c => crc_fast::CrcAlgorithm::Crc32Iscsi,
        }
    }

    /// The S3 name (`CRC64NVME`, `CRC32C`).
    pub fn s3_name(self) -> &'static str {
        match self {
            ChecksumAlgorithm::Crc64nvme => "CRC64NVME",
            ChecksumAlgorithm::Crc32c => "CRC32C",
        }
    }

    /// The checksum of `data`.
    pub fn checksum(self, data: &[u8]) -> Crc {
        Crc {
            algorithm: self,
            value: crc_fast::checksum(self.crc(), data),
            len: data.len() as u64,
        }
    }

    /// The checksum of no bytes, the start of a [`Crc::append`] chain.
    pub fn empty(self) -> Crc {
        self.checksum(&[])
    }
}

/// A CRC value with the length it covers, so values of consecutive parts can be combined
/// into the full-object value without reading the data again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Crc {
    algorithm: ChecksumAlgorithm,
    value: u64,
    len: u64,
}

impl Crc {
    /// The checksum of this data followed by the data `next` covers.
    pub fn append(self, next: Crc) -> Crc {
        debug_assert_eq!(self.algorithm, next.algorithm);
        Crc {
            algorithm: self.algorithm,
            value: crc_fast::checksum_combine(
                self.algorithm.crc(),
                self.value,
                next.value,
                next.len,
            ),
            len: self.len + next.len,
        }
    }

    /// The algorithm.
    pub fn algorithm(&self) -> ChecksumAlgorithm {
        self.algorithm
    }

    /// The raw CRC value.
    pub fn value(&self) -> u64 {
        self.value
    }

    /// Bytes covered.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it covers no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Base64 of the big-endian value, as in S3's `x-amz-checksum-*` headers.
    pub fn to_base64(&self) -> String {
        match self.algorithm {
            ChecksumAlgorithm::Crc64nvme => {
                aws_smithy_types::base64::encode(self.value.to_be_bytes())
            }
            ChecksumAlgorithm::Crc32c => {
                aws_smithy_types::base64::encode((self.value as u32).to_be_bytes())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        // Check values from the CRC catalogue for "123456789".
        assert_eq!(
            ChecksumAlgorithm::Crc64nvme.checksum(b"123456789").value(),
            0xae8b_1486_0a79_9888
        );
        assert_eq!(
            ChecksumAlgorithm::Crc32c.checksum(b"123456789").value(),
            0xe306_9283
        );
        // S3's CRC64NVME of the empty object.
        assert_eq!(
            ChecksumAlgorithm::Crc64nvme.empty().to_base64(),
            "AAAAAAAAAAA="
        );
    }

    #[test]
    fn combining_parts_equals_the_whole() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 31 % 251) as u8).collect();
        for alg in [ChecksumAlgorithm::Crc64nvme, ChecksumAlgorithm::Crc32c] {
            let whole = alg.checksum(&data);
            let combined = data
                .chunks(7_777)
                .fold(alg.empty(), |acc, c| acc.append(alg.checksum(c)));
            assert_eq!(combined, whole);
            assert_eq!(combined.to_base64(), whole.to_base64());
        }
    }
}
